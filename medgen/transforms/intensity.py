"""Intensity mappings between physical units and the network range [-1, 1].

CT: a fixed Hounsfield-unit window ``(lo, hi)`` maps linearly onto [-1, 1]; values outside the
window are clipped. Because the mapping is a fixed affine function it is restored exactly by
:func:`unit_to_hu` for every value inside the window (the only information lost is what lay
outside it, e.g. dense bone above ``hi``). A window of more than two HU values
``(h0, h1, ..., hn)`` is piecewise linear: the knots map onto evenly spaced points of [-1, 1],
so dense knots in soft tissue give it more of the network's range while air and dense bone stay
representable (still exactly invertible): ``(-1000, -200, -100, 0, 100, 200, 1000)`` gives
[-200, 200] HU two thirds of [-1, 1] (1/3 unit per 100 HU instead of 0.1).

MR: intensities have no physical unit, so :func:`robust_normalize` maps the ``lower``..``upper``
percentiles (optionally measured inside a body mask) onto [-1, 1] and clips. The two percentile
values are returned so the mapping can be recorded and undone approximately.

All functions accept NumPy arrays or torch tensors and return the same type (torch is never
imported here, so this module stays light).
"""

from __future__ import annotations

import numpy as np

__all__ = ["hu_to_unit", "unit_to_hu", "robust_normalize", "unit_to_range", "range_to_unit"]


def _check_window(window) -> tuple[float, float]:
    lo, hi = (float(w) for w in window)
    if not hi > lo:
        raise ValueError(f"window must be (lo, hi) with hi > lo, got {window!r}")
    return lo, hi


def check_knots(window) -> tuple[float, ...]:
    """A CT window as a tuple of floats: at least two HU values, strictly increasing."""
    knots = tuple(float(w) for w in window)
    if len(knots) < 2 or any(b <= a for a, b in zip(knots, knots[1:])):
        raise ValueError(f"window must be 2 or more strictly increasing HU values, got {window!r}")
    return knots


def _piecewise(x, xp: tuple[float, ...], fp: tuple[float, ...]):
    """Piecewise-linear map through ``(xp[i], fp[i])``, extended linearly beyond both ends."""
    if _is_numpy(x):
        x = np.asarray(x)
        out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
        y = x.astype(np.float64, copy=False)
        xs, fs = np.asarray(xp), np.asarray(fp)
        i = np.clip(np.searchsorted(xs, y, side="right") - 1, 0, len(xs) - 2)
        return (fs[i] + (y - xs[i]) * (fs[i + 1] - fs[i]) / (xs[i + 1] - xs[i])).astype(out_dtype)
    import torch
    y = x if x.is_floating_point() else x.float()
    xs = torch.tensor(xp, dtype=y.dtype, device=y.device)
    fs = torch.tensor(fp, dtype=y.dtype, device=y.device)
    i = (torch.bucketize(y, xs, right=True) - 1).clamp(0, len(xp) - 2)
    return fs[i] + (y - xs[i]) * (fs[i + 1] - fs[i]) / (xs[i + 1] - xs[i])


def _unit_knots(n: int) -> tuple[float, ...]:
    return tuple(-1.0 + 2.0 * k / (n - 1) for k in range(n))


def _clip(x, lo: float, hi: float):
    """``x`` clipped to ``[lo, hi]`` (NumPy array or float torch tensor)."""
    if _is_numpy(x):
        return np.clip(np.asarray(x), lo, hi)
    return (x if x.is_floating_point() else x.float()).clamp(lo, hi)


def _is_numpy(x) -> bool:
    return isinstance(x, (np.ndarray, np.generic, float, int))


def range_to_unit(x, lo: float, hi: float, *, clip: bool = True):
    """Map ``[lo, hi]`` linearly onto [-1, 1] (clipping outside when ``clip``).

    Examples:
        >>> range_to_unit(np.array([0.0, 5.0, 10.0, 20.0]), 0.0, 10.0)
        array([-1.,  0.,  1.,  1.])
    """
    lo, hi = _check_window((lo, hi))
    return _linear(x, (lo, hi) if clip else None, lambda y: 2.0 * (y - lo) / (hi - lo) - 1.0)


def unit_to_range(x, lo: float, hi: float, *, clip: bool = False):
    """Inverse of :func:`range_to_unit`: map [-1, 1] back onto ``[lo, hi]``.

    With ``clip`` the input is first clipped to [-1, 1] (useful for network outputs).
    """
    lo, hi = _check_window((lo, hi))
    return _linear(x, (-1.0, 1.0) if clip else None, lambda y: (y + 1.0) * 0.5 * (hi - lo) + lo)


def _linear(x, bounds: tuple[float, float] | None, fn):
    """``fn`` of ``x`` clipped to ``bounds`` (None: not clipped), for NumPy and torch alike.

    NumPy computes in float64 and returns the input's float dtype (float32 for integers); torch
    computes in the tensor's float dtype."""
    if _is_numpy(x):
        x = np.asarray(x)
        out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
        y = x.astype(np.float64, copy=False)
        if bounds is not None:
            y = np.clip(y, *bounds)
        return fn(y).astype(out_dtype)
    y = x if x.is_floating_point() else x.float()
    if bounds is not None:
        y = y.clamp(*bounds)
    return fn(y)


def hu_to_unit(hu, window=(-1000.0, 1000.0)):
    """Clip Hounsfield units to ``window`` and map them linearly onto [-1, 1].

    ``unit = 2 * (clip(hu, lo, hi) - lo) / (hi - lo) - 1``.

    Args:
        hu: CT values in HU (NumPy array or torch tensor).
        window: ``(lo, hi)`` in HU; ``lo`` maps to -1 and ``hi`` to +1. More than two values are
            piecewise-linear knots mapped onto evenly spaced points of [-1, 1].

    Returns:
        The same type as ``hu`` (float), values in [-1, 1].

    Examples:
        >>> hu_to_unit(np.array([-2000.0, -1000.0, 0.0, 1000.0, 3000.0]))
        array([-1., -1.,  0.,  1.,  1.])
        >>> hu_to_unit(np.array([40.0]), window=(-160, 240))
        array([0.])
        >>> hu_to_unit(np.array([-1000.0, -500.0, 250.0, 500.0, 2000.0]), window=(-1000, -500, 500, 1000)).round(4)
        array([-1.    , -0.3333,  0.1667,  0.3333,  1.    ])
    """
    knots = check_knots(window)
    if len(knots) == 2:
        return range_to_unit(hu, *knots, clip=True)
    return _piecewise(_clip(hu, knots[0], knots[-1]), knots, _unit_knots(len(knots)))


def unit_to_hu(x, window=(-1000.0, 1000.0), *, clip: bool = False):
    """Exact inverse of :func:`hu_to_unit` inside the window: [-1, 1] -> HU.

    Args:
        x: values in unit range (e.g. a synthetic CT from a translator).
        window: the same ``(lo, hi)`` used for :func:`hu_to_unit` (read it from the
            preprocessing record).
        clip: clip ``x`` to [-1, 1] first, so the result stays inside the window.

    Examples:
        >>> hu = np.array([-1000.0, -137.5, 0.0, 412.25, 1000.0])
        >>> np.allclose(unit_to_hu(hu_to_unit(hu)), hu)
        True
        >>> knots = (-1000, -500, 500, 1000)
        >>> np.allclose(unit_to_hu(hu_to_unit(hu, knots), knots), hu)
        True
    """
    knots = check_knots(window)
    if len(knots) == 2:
        return unit_to_range(x, *knots, clip=clip)
    return _piecewise(_clip(x, -1.0, 1.0) if clip else x, _unit_knots(len(knots)), knots)


def robust_normalize(array, mask=None, lower: float = 0.5, upper: float = 99.5):
    """Map the ``lower``..``upper`` percentiles of ``array`` onto [-1, 1] and clip.

    Percentiles are measured inside ``mask`` when given (so a large air background does not
    decide the mapping), and applied to the whole array.

    Args:
        array: MR intensities (NumPy array or torch tensor).
        mask: boolean array of the same shape, or None for all voxels.
        lower: lower percentile (0-100) mapped to -1.
        upper: upper percentile (0-100) mapped to +1.

    Returns:
        ``(normalized, (p_lo, p_hi))``: the normalised array (same type as ``array``, values in
        [-1, 1]) and the two intensity values used, for the preprocessing record.

    Raises:
        ValueError: the percentiles are out of order, the mask is empty, or the selected
            intensities are constant (nothing to normalise).

    Examples:
        >>> x = np.linspace(0.0, 100.0, 101)
        >>> y, (lo, hi) = robust_normalize(x, lower=10, upper=90)
        >>> float(lo), float(hi), float(y.min()), float(y.max()), float(y[50])
        (10.0, 90.0, -1.0, 1.0, 0.0)
    """
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"need 0 <= lower < upper <= 100, got lower={lower}, upper={upper}")
    values = np.asarray(array if _is_numpy(array) else array.detach().cpu().numpy())
    if mask is not None:
        mask = np.asarray(mask if _is_numpy(mask) else mask.detach().cpu().numpy()).astype(bool)
        if mask.shape != values.shape:
            raise ValueError(f"mask shape {mask.shape} does not match array shape {values.shape}")
        values = values[mask]
        if values.size == 0:
            raise ValueError("the mask selects no voxels")
    p_lo, p_hi = (float(v) for v in np.percentile(values.astype(np.float64, copy=False), [lower, upper]))
    if not p_hi > p_lo:
        raise ValueError(f"intensities between the {lower} and {upper} percentiles are constant ({p_lo:g})")
    return range_to_unit(array, p_lo, p_hi, clip=True), (p_lo, p_hi)
