"""Realism metrics: per-label Wasserstein distances and the Frechet distance of fixed random features."""

from __future__ import annotations

import numpy as np
import pytest

from medgen.metrics.realism import (RandomConvFeatures, frechet_distance, frechet_from_features,
                                    per_label_means, per_label_wasserstein, slice_features)


def _pair(seed: int, shape=(24, 24, 12)):
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint8)
    lab[4:20, 4:20, 2:10] = 1
    lab[8:14, 8:14, 4:8] = 2
    img = np.where(lab == 1, 50.0, np.where(lab == 2, 300.0, -1000.0)) + rng.normal(0, 10, shape)
    return img, lab


def test_wasserstein_is_zero_for_identical_and_equals_a_constant_shift():
    img, lab = _pair(0)
    names = {0: "background", 1: "muscle", 2: "bone"}
    same = per_label_wasserstein(img, img, lab, names)
    assert same == {"muscle": 0.0, "bone": 0.0}
    shifted = img.copy()
    shifted[lab == 2] += 40.0
    w = per_label_wasserstein(shifted, img, lab, names, include_background=True)
    assert w["bone"] == pytest.approx(40.0, abs=1e-6)
    assert w["muscle"] == pytest.approx(0.0, abs=1e-9) and w["background"] == pytest.approx(0.0, abs=1e-9)


def test_wasserstein_compares_unpaired_sets_per_label():
    (a, la), (b, lb) = _pair(1), _pair(2, shape=(30, 26, 14))
    w = per_label_wasserstein([a], [b + 5.0], [la], {1: "muscle", 2: "bone"}, real_labels=[lb])
    assert w["muscle"] == pytest.approx(5.0, abs=1.5) and w["bone"] == pytest.approx(5.0, abs=3.0)
    assert per_label_means(a, la, {0: "bg", 1: "muscle", 2: "bone"})["bone"] == pytest.approx(300.0, abs=2.0)


def test_random_feature_net_is_fixed_by_its_seed():
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 6)).astype(np.float32)
    f1 = slice_features(list(x), feature_net=RandomConvFeatures(seed=0))
    f2 = slice_features(list(x), feature_net=RandomConvFeatures(seed=0))
    f3 = slice_features(list(x), feature_net=RandomConvFeatures(seed=1))
    assert f1.shape == (12, 224)
    np.testing.assert_array_equal(f1, f2)
    assert not np.allclose(f1, f3)


def test_frechet_distance_orders_similar_below_different():
    rng = np.random.default_rng(0)

    def vols(n, mean, sd):
        base = np.full((n, 32, 32, 8), -1.0, np.float32)
        base[:, 6:26, 6:26] = rng.normal(mean, sd, (n, 20, 20, 8))
        return list(np.clip(base, -1, 1))

    real, also_real, brighter = vols(3, 0.0, 0.1), vols(3, 0.0, 0.1), vols(3, 0.5, 0.1)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(also_real, real) < frechet_distance(brighter, real)


def test_frechet_needs_two_samples_per_side():
    with pytest.raises(ValueError):
        frechet_from_features(np.zeros((1, 4)), np.zeros((5, 4)))
