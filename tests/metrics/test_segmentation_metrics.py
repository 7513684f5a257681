"""Segmentation metrics on inputs with known answers, and matching labels by name."""

import math

import numpy as np
import pytest

from medgen.errors import InputError
from medgen.metrics.segmentation import dice, hd95, per_label_scores


def _sphere(shape, center, radius):
    g = np.indices(shape).astype(float)
    d = np.sqrt(sum((g[i] - center[i]) ** 2 for i in range(3)))
    return d <= radius


def test_identical_masks():
    s = _sphere((32, 32, 32), (16, 16, 16), 8)
    assert dice(s, s) == 1.0
    assert hd95(s, s, (1, 1, 1)) == 0.0


def test_dice_known_value_and_empty_cases():
    a = np.zeros((10, 10, 10), bool)
    b = a.copy()
    a[:4] = True  # 400 voxels
    b[2:6] = True  # 400 voxels, overlap 200
    assert dice(a, b) == pytest.approx(0.5)
    empty = np.zeros_like(a)
    assert dice(empty, empty) == 1.0
    assert dice(a, empty) == 0.0
    assert hd95(empty, empty) == 0.0
    assert hd95(a, empty) == math.inf


def test_hd95_single_voxels_uses_spacing():
    a = np.zeros((10, 10, 12), bool)
    b = a.copy()
    a[5, 5, 5] = True
    b[5, 5, 9] = True
    assert hd95(a, b, (1.0, 1.0, 2.0)) == pytest.approx(8.0)
    assert hd95(a, b, (3.0, 3.0, 0.5)) == pytest.approx(2.0)


def test_hd95_shifted_sphere():
    a = _sphere((48, 48, 48), (24, 24, 24), 10)
    b = _sphere((48, 48, 48), (27, 24, 24), 10)  # shifted 3 voxels along x
    h = hd95(a, b, (2.0, 1.0, 1.0))  # 3 voxels along x = 6 mm
    # The far poles are exactly 6 mm apart; the 95th percentile is below that but well above 0.
    assert 3.0 < h <= 6.0 + 1e-9
    # Concentric spheres: every surface point is ~3 voxels from the other surface.
    c = _sphere((48, 48, 48), (24, 24, 24), 13)
    assert hd95(a, c, (1, 1, 1)) == pytest.approx(3.0, abs=1.0)


def test_per_label_scores_match_by_name_across_different_ids():
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[2:8] = 3  # liver
    ref[10:15] = 5  # spleen
    ref[16:18] = 7  # only in reference
    pred = np.zeros_like(ref)
    pred[2:8] = 1  # liver, id 1 in the prediction
    pred[10:14] = 2  # spleen, id 2, one slab short
    ref_names = {0: "background", 3: "liver", 5: "Spleen", 7: "aorta"}
    pred_names = {"0": "background", "1": "liver", "2": "spleen", "9": "stomach"}
    scores = per_label_scores(pred, ref, pred_names=pred_names, ref_names=ref_names, spacing=(1, 1, 1))
    assert set(scores) == {"liver", "spleen"}
    assert scores["liver"]["dice"] == 1.0 and scores["liver"]["hd95"] == 0.0
    assert scores["spleen"]["dice"] == pytest.approx(2 * 4 / 9)
    assert scores["spleen"]["ref_voxels"] == 5 * 400


def test_per_label_scores_without_common_names_is_an_error():
    a = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(InputError):
        per_label_scores(a, a, pred_names={1: "x"}, ref_names={1: "y"})
