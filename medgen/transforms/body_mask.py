"""Body (foreground) masks for CT and MR: threshold, keep the large components, fill holes.

CT: voxels above a HU threshold (default -500: everything denser than lung/air), so air and
the scanner's foam mattress are background. MR: an Otsu threshold on a Gaussian-smoothed copy
(MR has no fixed units), scaled down a little because Otsu on a body-dominated field of view
tends to split tissue classes rather than body and air. In both, connected components smaller
than ``min_component_fraction`` of the largest one are dropped (noise, cables, a detached table
fragment) while arms and legs, which are often separate components, are kept; holes (lungs,
bowel gas) are then filled in 3D and slice by slice along the last (superior-inferior after RAS
reorientation) axis, since airways open to the field-of-view edge defeat a 3D fill alone.
"""

from __future__ import annotations

import numpy as np
from monai.transforms import MapTransform
from scipy import ndimage

from medgen.errors import InputError
from medgen.io.volume import Volume
from medgen.transforms._base import add_step


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1D sample (maximises the between-class variance of a histogram).

    Examples:
        >>> x = np.r_[np.zeros(100), np.full(100, 10.0)]
        >>> 0.0 < otsu_threshold(x) < 10.0
        True
    """
    values = np.asarray(values, np.float64).ravel()
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def keep_large_components(mask: np.ndarray, min_fraction: float = 0.01) -> np.ndarray:
    """Keep the largest connected component and those at least ``min_fraction`` of its size.

    ``min_fraction=1`` keeps the largest component only.
    """
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = sizes >= sizes.max() * min_fraction
    keep[int(np.argmax(sizes))] = True
    keep[0] = False
    return keep[labels]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes in 3D and then slice by slice along the last axis."""
    mask = ndimage.binary_fill_holes(mask)
    for k in range(mask.shape[2]):
        if mask[:, :, k].any():
            mask[:, :, k] = ndimage.binary_fill_holes(mask[:, :, k])
    return mask


def ct_body_mask(hu: np.ndarray, *, threshold: float = -500.0, min_component_fraction: float = 0.01,
                 fill: bool = True) -> np.ndarray:
    """Body mask of a CT in HU (bool array of the same shape)."""
    mask = keep_large_components(hu > threshold, min_component_fraction)
    return fill_holes(mask) if fill else mask


def mr_body_mask(image: np.ndarray, *, spacing=(1.0, 1.0, 1.0), smoothing_mm: float = 2.0,
                 otsu_scale: float = 0.75, min_component_fraction: float = 0.01, fill: bool = True) -> np.ndarray:
    """Body mask of an MR (bool array): Otsu on a smoothed copy, scaled by ``otsu_scale``."""
    sigma = [smoothing_mm / max(s, 1e-6) for s in spacing]
    smooth = ndimage.gaussian_filter(image.astype(np.float32, copy=False), sigma) if smoothing_mm > 0 else image
    # Otsu on a robust range (very bright outliers, e.g. fat or vessels, would skew the histogram)
    hi = np.percentile(smooth, 99.9)
    threshold = otsu_scale * otsu_threshold(np.clip(smooth, None, hi))
    mask = keep_large_components(smooth > threshold, min_component_fraction)
    return fill_holes(mask) if fill else mask


class BodyMaskd(MapTransform):
    """Compute the body mask of ``data['image']`` and store it as ``data['mask']`` (uint8 Volume).

    Args:
        modality: ``"ct"`` (HU threshold) or ``"mr"`` (smoothed Otsu).
        ct_threshold_hu, mr_smoothing_mm, mr_otsu_scale, min_component_fraction, fill_holes:
            see :func:`ct_body_mask` and :func:`mr_body_mask`.

    Raises:
        InputError: the mask is empty (nothing above the threshold: not a body scan, or a
            volume of the wrong modality).
    """

    def __init__(self, keys=("image",), *, modality: str, ct_threshold_hu: float = -500.0,
                 mr_smoothing_mm: float = 2.0, mr_otsu_scale: float = 0.75, min_component_fraction: float = 0.01,
                 fill_holes: bool = True):
        super().__init__(keys)
        self.modality = modality
        self.params = {"ct_threshold_hu": ct_threshold_hu, "mr_smoothing_mm": mr_smoothing_mm,
                       "mr_otsu_scale": mr_otsu_scale, "min_component_fraction": min_component_fraction,
                       "fill_holes": fill_holes}

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        image: Volume = d[self.first_key(d)]
        p = self.params
        if self.modality == "ct":
            mask = ct_body_mask(image.array, threshold=p["ct_threshold_hu"],
                                min_component_fraction=p["min_component_fraction"], fill=p["fill_holes"])
        else:
            mask = mr_body_mask(image.array, spacing=image.spacing, smoothing_mm=p["mr_smoothing_mm"],
                                otsu_scale=p["mr_otsu_scale"], min_component_fraction=p["min_component_fraction"],
                                fill=p["fill_holes"])
        n = int(mask.sum())
        if n == 0:
            raise InputError("has no foreground: the body mask is empty", path=image.name,
                             fix="check the modality (--modality) and that the volume shows a body")
        d["mask"] = image.with_array(mask.astype(np.uint8))
        add_step(d, {"name": "body_mask", "modality": self.modality, **p, "voxels": n,
                     "fraction": round(n / mask.size, 6)})
        return d
