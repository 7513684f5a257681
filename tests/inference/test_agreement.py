"""The reliability flag: agreement of two predictions, low on a deliberately broken input."""

from __future__ import annotations

import numpy as np

from medgen.data.phantoms import make_phantom
from medgen.inference.agreement import agreement, perturbed_prediction
from medgen.io.volume import Volume


def test_agreement_scores_each_structure_and_flags_the_weak_one():
    a = np.zeros((20, 20, 10), np.uint8)
    a[2:10, 2:10] = 1
    a[12:18, 12:18] = 2
    b = a.copy()
    b[12:18, 12:15] = 0  # structure 2 half lost in the second prediction
    report = agreement(a, b, {0: "background", 1: "liver", 2: "spleen"}, threshold=0.7)
    assert report["per_structure"]["liver"] == 1.0
    assert abs(report["per_structure"]["spleen"] - 2 * 18 * 10 / (36 * 10 + 18 * 10)) < 1e-3
    assert report["low_structures"] == ["spleen"] and report["flagged"]
    assert agreement(a, a, {0: "background", 1: "liver", 2: "spleen"})["flagged"] is False


def test_perturbed_prediction_maps_the_second_mask_back_onto_the_voxels():
    p = make_phantom(2, shape=(40, 40, 24), spacing=(4.0, 4.0, 6.0))
    mr = Volume(p.mr, p.affine)
    threshold = float(np.percentile(p.mr, 70))

    def pointwise(v):  # a shift-equivariant "model": its second mask, shifted back, is the first exactly
        return v.with_array((v.array > threshold).astype(np.uint8))

    first = pointwise(mr).array
    second = perturbed_prediction(mr, pointwise, gamma=1.0, shift_voxels=3)
    inner = (slice(0, 37), slice(0, 37), slice(0, 21))  # the shifted-out rim is replicated, not predicted
    assert np.array_equal(first[inner], second[inner])
    # a model that ignores the image and paints fixed voxels disagrees with itself once the image moves
    fixed = np.zeros(mr.shape, np.uint8)
    fixed[10:20, 10:20, 5:12] = 1
    moved = perturbed_prediction(mr, lambda v: v.with_array(fixed), shift_voxels=3)
    assert agreement(fixed, moved, {0: "background", 1: "x"})["per_structure"]["x"] < 0.8
