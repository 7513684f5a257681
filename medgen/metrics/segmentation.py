"""Segmentation overlap and boundary metrics: Dice, 95th-percentile Hausdorff distance, and
per-label scores matched by label NAME.

Matching by name matters because a CT segmenter (e.g. TotalSegmentator's ``total`` task) and an
MR reference annotation number the same organ differently; comparing ids would silently compare
different organs.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from medgen.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["dice", "hd95", "per_label_scores", "normalise_name", "match_names"]


def _check_shapes(pred: np.ndarray, ref: np.ndarray) -> None:
    if pred.shape != ref.shape:
        raise InputError(
            f"prediction shape {pred.shape} differs from reference shape {ref.shape}",
            fix="resample the prediction onto the reference grid (nearest) first; "
            "medgen evaluate segmentation does this",
        )


def dice(pred, ref) -> float:
    """Dice overlap ``2|P∩R| / (|P|+|R|)`` of two binary masks (non-zero = foreground).

    Returns 1.0 when both masks are empty (nothing to find, nothing found).
    """
    p = np.asarray(pred).astype(bool)
    r = np.asarray(ref).astype(bool)
    _check_shapes(p, r)
    total = int(p.sum()) + int(r.sum())
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(p, r).sum() / total)


def _surface(mask: np.ndarray) -> np.ndarray:
    # Voxels of the mask with at least one 6-neighbour outside it; the volume border counts as
    # outside so that objects touching the edge still have a closed surface.
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)
    return mask & ~eroded


def hd95(pred, ref, spacing: Sequence[float] = (1.0, 1.0, 1.0), *, percentile: float = 95.0) -> float:
    """Symmetric 95th-percentile Hausdorff distance between the surfaces of two binary masks.

    Distances from every surface voxel of one mask to the nearest surface voxel of the other are
    computed with a Euclidean distance transform in millimetres (``spacing`` per array axis); the
    two directed distance sets are pooled and their 95th percentile is returned.

    Returns:
        Distance in mm; 0.0 when both masks are empty, ``inf`` when exactly one is empty.
    """
    p = np.asarray(pred).astype(bool)
    r = np.asarray(ref).astype(bool)
    _check_shapes(p, r)
    if p.ndim != len(spacing):
        raise InputError(f"spacing {tuple(spacing)} does not match a {p.ndim}D mask")
    has_p, has_r = bool(p.any()), bool(r.any())
    if not has_p and not has_r:
        return 0.0
    if has_p != has_r:
        return math.inf
    # Crop to the joint bounding box (+1 voxel margin) so big volumes with small organs stay cheap.
    idx = np.argwhere(p | r)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, p.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    p, r = p[sl], r[sl]
    sp, sr = _surface(p), _surface(r)
    sampling = tuple(float(s) for s in spacing)
    dist_to_r = ndimage.distance_transform_edt(~sr, sampling=sampling)
    dist_to_p = ndimage.distance_transform_edt(~sp, sampling=sampling)
    distances = np.concatenate([dist_to_r[sp], dist_to_p[sr]])
    return float(np.percentile(distances, percentile))


def normalise_name(name: str) -> str:
    """Canonical form of a label name for matching: lower case, spaces/hyphens -> underscores."""
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def _ids_by_name(names: Mapping) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for key, name in names.items():
        label_id = int(key)
        if label_id == 0:
            continue
        out.setdefault(normalise_name(name), []).append(label_id)
    return out


def match_names(pred_names: Mapping, ref_names: Mapping) -> tuple[list[str], list[str], list[str]]:
    """Split label names into (matched, only in prediction, only in reference), background excluded."""
    p = _ids_by_name(pred_names)
    r = _ids_by_name(ref_names)
    matched = [n for n in r if n in p]
    return matched, [n for n in p if n not in r], [n for n in r if n not in p]


def per_label_scores(
    pred,
    ref,
    *,
    pred_names: Mapping | None = None,
    ref_names: Mapping,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    compute_hd95: bool = True,
) -> dict[str, dict[str, float]]:
    """Dice and HD95 for every label name present in both label maps' name tables.

    Args:
        pred, ref: integer label maps on the same grid.
        pred_names: id -> name of the prediction (keys may be str or int); defaults to
            ``ref_names`` (same numbering).
        ref_names: id -> name of the reference. Id 0 is background and ignored.
        spacing: voxel size in mm per array axis (for HD95).
        compute_hd95: skip the (slower) distance computation when False.

    Returns:
        ``{name: {"dice", "hd95", "pred_voxels", "ref_voxels"}}`` for names found in both tables,
        in the reference's order. Several ids with the same name are merged.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    _check_shapes(pred, ref)
    pred_names = ref_names if pred_names is None else pred_names
    p_ids = _ids_by_name(pred_names)
    r_ids = _ids_by_name(ref_names)
    matched, only_p, only_r = match_names(pred_names, ref_names)
    if not matched:
        raise InputError(
            "no label name is shared between prediction and reference",
            fix=f"check the label-name files (prediction has {sorted(p_ids)[:8]}, reference has {sorted(r_ids)[:8]})",
        )
    if only_p or only_r:
        log.info("labels only in prediction: %s; only in reference: %s", only_p, only_r)
    scores: dict[str, dict[str, float]] = {}
    for name in matched:
        pm = np.isin(pred, p_ids[name])
        rm = np.isin(ref, r_ids[name])
        scores[name] = {
            "dice": dice(pm, rm),
            "hd95": hd95(pm, rm, spacing) if compute_hd95 else float("nan"),
            "pred_voxels": int(pm.sum()),
            "ref_voxels": int(rm.sum()),
        }
    return scores
