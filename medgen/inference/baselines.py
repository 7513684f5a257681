"""Baselines for the MR -> CT -> mask chain: what a CT segmenter does without a translator.

* ``none``: the MR, intensity-normalised (robust 0.5-99.5 percentiles inside the body onto the
  segmenter's HU input range, air outside the body), fed to the CT segmenter as if it were CT.
* ``histogram``: the MR's body intensities histogram-matched (quantile mapping) to a CT
  reference histogram, air outside the body. The reference is the segmenter bundle's stored
  quantiles of its training CTs (``extra.ct_reference_quantiles``, written by
  ``medgen train segmenter``) or a CT the user gives (``--ct-reference``).

Both produce a pseudo-CT in HU on the MR's grid, so the rest of the chain is unchanged and the
comparison with a learned translator is fair.
"""

from __future__ import annotations

import logging

import numpy as np

from medgen.errors import InputError
from medgen.io.volume import Volume

log = logging.getLogger(__name__)

__all__ = ["BASELINES", "normalised_mr_as_ct", "histogram_matched_ct", "reference_quantiles_from_ct", "mr_body"]

BASELINES = ("none", "histogram")
AIR_HU = -1000.0


def mr_body(mr: Volume) -> np.ndarray:
    """Boolean body mask of an MR (smoothed Otsu; the whole volume if that finds nothing)."""
    from medgen.transforms.body_mask import mr_body_mask
    mask = mr_body_mask(np.asarray(mr.array, np.float32), spacing=mr.spacing)
    if not mask.any():
        log.warning("%s: no MR body found; using the whole volume", mr.name)
        mask = np.ones(mr.shape, bool)
    return mask


def normalised_mr_as_ct(mr: Volume, hu_range: tuple[float, float]) -> Volume:
    """The ``none`` baseline: MR body percentiles 0.5..99.5 mapped linearly onto ``hu_range``."""
    arr = np.asarray(mr.array, np.float32)
    body = mr_body(mr)
    lo, hi = np.percentile(arr[body], [0.5, 99.5])
    hi = hi if hi > lo else lo + 1.0
    u = np.clip((arr - lo) / (hi - lo), 0, 1)
    out = hu_range[0] + u * (hu_range[1] - hu_range[0])
    out[~body] = AIR_HU
    return mr.with_array(out.astype(np.float32), meta={**mr.meta, "modality": "CT", "synthetic": "none-baseline"})


def reference_quantiles_from_ct(ct: Volume, *, threshold: float = -500.0, n: int = 101) -> np.ndarray:
    """Quantiles of a CT's body HU values (voxels above ``threshold``)."""
    values = np.asarray(ct.array, np.float32)
    values = values[values > threshold]
    if values.size == 0:
        raise InputError(f"has no voxel above {threshold} HU; is it a CT in Hounsfield units?", path=ct.name)
    return np.quantile(values, np.linspace(0, 1, n))


def histogram_matched_ct(mr: Volume, quantiles) -> Volume:
    """The ``histogram`` baseline: MR body intensities quantile-mapped onto the CT reference."""
    q = np.asarray(quantiles, np.float64)
    if q.ndim != 1 or q.size < 3 or np.any(np.diff(q) < 0):
        raise InputError("the CT reference quantiles must be an increasing list", path="ct_reference_quantiles")
    arr = np.asarray(mr.array, np.float32)
    body = mr_body(mr)
    mr_q = np.quantile(arr[body], np.linspace(0, 1, q.size))
    # strictly increasing source knots for interpolation (ties in flat MR histograms)
    mr_q = mr_q + np.arange(q.size) * 1e-6 * max(1.0, float(np.ptp(mr_q)))
    out = np.full(arr.shape, AIR_HU, np.float32)
    out[body] = np.interp(arr[body], mr_q, q).astype(np.float32)
    return mr.with_array(out, meta={**mr.meta, "modality": "CT", "synthetic": "histogram-baseline"})
