"""Image-similarity metrics for synthetic CT against a reference CT: MAE, PSNR and SSIM.

All functions take 3D numpy arrays on the same grid (resample first: see
:func:`medgen.io.geometry.resample_like`) and an optional boolean mask restricting the
comparison to the body, because air outside the patient dominates whole-volume numbers and
hides errors where they matter.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from medgen.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["mae", "psnr", "ssim"]


def _prepare(pred, ref, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    pred = np.asarray(pred, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if pred.shape != ref.shape:
        raise InputError(
            f"prediction shape {pred.shape} differs from reference shape {ref.shape}",
            fix="resample the prediction onto the reference grid first (medgen evaluate does this)",
        )
    if mask is not None:
        mask = np.asarray(mask).astype(bool)
        if mask.shape != ref.shape:
            raise InputError(f"mask shape {mask.shape} differs from image shape {ref.shape}")
        if not mask.any():
            raise InputError("the mask is empty; nothing to compare", fix="check the mask file")
    return pred, ref, mask


def mae(pred, ref, mask=None) -> float:
    """Mean absolute error (in the images' units, e.g. HU) over ``mask`` or the whole volume."""
    pred, ref, mask = _prepare(pred, ref, mask)
    diff = np.abs(pred - ref)
    return float(diff[mask].mean() if mask is not None else diff.mean())


def _data_range(ref: np.ndarray, mask: np.ndarray | None, data_range) -> float:
    if data_range is not None:
        return float(data_range)
    values = ref[mask] if mask is not None else ref
    rng = float(values.max() - values.min())
    return rng if rng > 0 else 1.0


def psnr(pred, ref, mask=None, data_range=None) -> float:
    """Peak signal-to-noise ratio in dB: ``20 log10(range) - 10 log10(MSE)``.

    Args:
        pred, ref: 3D arrays on the same grid.
        mask: optional boolean mask; the MSE is taken over it.
        data_range: the signal range (e.g. 2000 for a [-1000, 1000] HU window). Defaults to the
            reference's max - min (over the mask), which makes the number data dependent, so pass
            it explicitly when comparing across cases.

    Returns:
        PSNR in dB; ``inf`` for identical images.
    """
    pred, ref, mask = _prepare(pred, ref, mask)
    sq = (pred - ref) ** 2
    mse = float(sq[mask].mean() if mask is not None else sq.mean())
    rng = _data_range(ref, mask, data_range)
    if mse == 0:
        return float("inf")
    return float(20 * np.log10(rng) - 10 * np.log10(mse))


def ssim(pred, ref, mask=None, data_range=None, *, sigma: float = 1.5, per_slice: bool = False) -> float:
    """Structural similarity with a Gaussian window, averaged over ``mask``.

    Local means, variances and covariance are Gaussian-weighted (sigma 1.5 voxels, as in Wang et
    al. 2004) in 3D, or in-plane per axial slice with ``per_slice=True`` (useful for thick
    slices). The SSIM map is averaged over the mask (or the whole volume).

    Args:
        pred, ref: 3D arrays on the same grid.
        mask: optional boolean mask over which the SSIM map is averaged.
        data_range: signal range for the stabilising constants (defaults as in :func:`psnr`).
        sigma: Gaussian window width in voxels.
        per_slice: filter in-plane only (axes 0 and 1), slice by slice along the last axis.

    Returns:
        Mean SSIM in [-1, 1]; 1 for identical images.

    Note:
        SSIM's luminance term is not shift invariant: pass CT as HU + 1024 (non-negative), as
        ``medgen evaluate translation`` does, or values near 0 HU are penalised for tiny offsets.
    """
    pred, ref, mask = _prepare(pred, ref, mask)
    rng = _data_range(ref, mask, data_range)
    c1 = (0.01 * rng) ** 2
    c2 = (0.03 * rng) ** 2
    sig = (sigma, sigma, 0.0) if per_slice else sigma

    def smooth(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma=sig, mode="reflect", truncate=3.5)

    mu_p, mu_r = smooth(pred), smooth(ref)
    var_p = smooth(pred * pred) - mu_p**2
    var_r = smooth(ref * ref) - mu_r**2
    cov = smooth(pred * ref) - mu_p * mu_r
    num = (2 * mu_p * mu_r + c1) * (2 * cov + c2)
    den = (mu_p**2 + mu_r**2 + c1) * (var_p + var_r + c2)
    smap = num / den
    return float(smap[mask].mean() if mask is not None else smap.mean())
