"""A reliability flag without ground truth: agreement between two independent predictions.

A mask that changes a lot when its input changes in ways that should not matter is not to be
trusted. :func:`perturbed_prediction` segments a second, perturbed copy of the image: its
intensities through a gamma curve (a mild contrast change, applied to the values above the
image's 1st percentile so air stays air) and its voxels shifted by a few voxels (so every
sliding window sits elsewhere), and the prediction is shifted back. :func:`agreement` scores the
two masks per structure (Dice between the predictions, not against a truth) and flags the case
when the mean, or a structure's score, is below a threshold. Any two predictions can be scored
(two routes, say), the perturbation is just the default second opinion.

Examples:
    >>> import numpy as np
    >>> a = np.zeros((8, 8, 4), np.uint8); a[2:6, 2:6] = 1
    >>> report = agreement(a, a.copy(), {0: "background", 1: "liver"})
    >>> report["per_structure"], report["flagged"]
    ({'liver': 1.0}, False)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from medgen.io.volume import Volume

__all__ = ["agreement", "perturbed_prediction", "DEFAULT_THRESHOLD"]

#: Agreement (Dice between two predictions) under which a case or a structure is flagged.
DEFAULT_THRESHOLD = 0.7


def agreement(mask_a: np.ndarray, mask_b: np.ndarray, label_names: Mapping[int, str], *,
              threshold: float = DEFAULT_THRESHOLD, min_voxels: int = 10) -> dict:
    """Per-structure Dice between two predictions of the same image, and a flag.

    Args:
        mask_a, mask_b: label maps on the same grid.
        label_names: id -> name (0 = background, not scored).
        threshold: a case is flagged when its mean score, or any structure's, is below this.
        min_voxels: structures smaller than this in both masks are not scored (too small to say).

    Returns:
        ``{"per_structure": {name: dice}, "mean": float | None, "flagged": bool,
        "low_structures": [names], "threshold": threshold}``.
    """
    a, b = np.asarray(mask_a), np.asarray(mask_b)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    scores = {}
    for cid, name in sorted(label_names.items()):
        if int(cid) == 0:
            continue
        in_a, in_b = a == cid, b == cid
        na, nb = int(in_a.sum()), int(in_b.sum())
        if max(na, nb) < min_voxels:
            continue
        scores[str(name)] = round(2.0 * float(np.logical_and(in_a, in_b).sum()) / (na + nb), 4)
    mean = round(float(np.mean(list(scores.values()))), 4) if scores else None
    low = sorted(n for n, s in scores.items() if s < threshold)
    return {"per_structure": scores, "mean": mean, "flagged": mean is None or mean < threshold or bool(low),
            "low_structures": low, "threshold": threshold}


def perturbed_prediction(image: Volume, predict, *, gamma: float = 1.25, shift_voxels: int = 3) -> np.ndarray:
    """``predict`` on a perturbed copy of ``image``, mapped back onto ``image``'s voxels.

    Args:
        image: the volume the first prediction was made on (MR, or synthetic CT).
        predict: ``Volume -> Volume`` label map on the same grid (e.g. a segmenter's ``segment``).
        gamma: contrast change of the values above the 1st percentile (1 = none).
        shift_voxels: voxels the image is shifted along each axis (edges replicated).

    Returns:
        The second label map, on ``image``'s grid.
    """
    arr = np.asarray(image.array, np.float32)
    lo, hi = (float(v) for v in np.percentile(arr, [1.0, 99.0]))
    if hi > lo and gamma != 1.0:
        u = np.clip((arr - lo) / (hi - lo), 0.0, None)
        arr = np.where(arr > lo, lo + (hi - lo) * u ** gamma, arr).astype(np.float32)
    s = [min(shift_voxels, max(n // 8, 0)) for n in arr.shape]
    pad = [(k, 0) for k in s]
    shifted = np.pad(arr, pad, mode="edge")[tuple(slice(0, n) for n in arr.shape)]
    labels = np.asarray(predict(image.with_array(shifted)).array)
    back = np.pad(labels, [(0, k) for k in s], mode="edge")[tuple(slice(k, k + n) for k, n in zip(s, arr.shape))]
    return back
