"""CT window mapping and MR robust normalisation: exact inverses, ranges, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medgen.transforms.intensity import hu_to_unit, robust_normalize, unit_to_hu


@pytest.mark.parametrize("window", [(-1000.0, 1000.0), (-160.0, 240.0), (-1024.0, 3071.0)])
def test_ct_window_is_exactly_inverted_inside_the_window(window):
    rng = np.random.default_rng(0)
    hu = rng.uniform(window[0], window[1], size=(8, 8, 8)).astype(np.float32)
    unit = hu_to_unit(hu, window)
    assert unit.dtype == np.float32 and unit.min() >= -1 and unit.max() <= 1
    np.testing.assert_allclose(unit_to_hu(unit, window), hu, atol=1e-6 * (window[1] - window[0]))
    # the end points map to -1 / +1 exactly
    assert hu_to_unit(np.array([window[0], window[1]]), window).tolist() == [-1.0, 1.0]


def test_ct_window_clips_outside_and_matches_the_formula():
    hu = np.array([-3000.0, -1000.0, -500.0, 0.0, 250.0, 1000.0, 3000.0])
    unit = hu_to_unit(hu, (-1000, 1000))
    np.testing.assert_allclose(unit, [-1, -1, -0.5, 0, 0.25, 1, 1])
    np.testing.assert_allclose(unit_to_hu(unit, (-1000, 1000)), np.clip(hu, -1000, 1000))
    assert unit_to_hu(np.array([1.5]), (-1000, 1000), clip=True)[0] == 1000.0


def test_ct_window_works_on_torch_tensors_and_keeps_the_type():
    hu = torch.linspace(-1200, 1200, 25)
    unit = hu_to_unit(hu, (-1000, 1000))
    assert isinstance(unit, torch.Tensor) and float(unit.min()) == -1.0 and float(unit.max()) == 1.0
    back = unit_to_hu(unit, (-1000, 1000))
    assert isinstance(back, torch.Tensor)
    torch.testing.assert_close(back, hu.clamp(-1000, 1000), atol=1e-3, rtol=0)
    assert hu_to_unit(torch.tensor([0], dtype=torch.int16)).dtype == torch.float32


def test_ct_window_rejects_an_empty_window():
    with pytest.raises(ValueError, match="strictly increasing"):
        hu_to_unit(np.zeros(3), (100, 100))
    with pytest.raises(ValueError, match="strictly increasing"):
        hu_to_unit(np.zeros(3), (-1000, 200, 100, 1000))


def test_piecewise_ct_window_expands_soft_tissue_and_inverts_exactly():
    import torch
    # every interval gets the same share of [-1, 1]: dense knots in soft tissue expand it
    knots = (-1000.0, -200.0, -100.0, 0.0, 100.0, 200.0, 1000.0)
    hu = np.array([-1500.0, -1000.0, -800.0, -100.0, 50.0, 700.0, 1000.0, 2500.0])
    unit = hu_to_unit(hu, knots)
    assert unit.min() == -1 and unit.max() == 1 and np.all(np.diff(unit) >= 0)
    assert hu_to_unit(np.array([-200.0, -100.0, 0.0]), knots) == pytest.approx([-2 / 3, -1 / 3, 0.0])
    # fat (-100) vs muscle (50): 1/3 unit per 100 HU instead of 0.1 (linear [-1000, 1000])
    fat_muscle = hu_to_unit(np.array([-100.0, 50.0]), knots)
    assert fat_muscle[1] - fat_muscle[0] == pytest.approx(0.5)
    inside = hu[(hu >= -1000) & (hu <= 1000)]
    assert np.allclose(unit_to_hu(hu_to_unit(inside, knots), knots), inside, atol=1e-4)
    # torch and numpy agree, in both directions
    t = hu_to_unit(torch.tensor(hu, dtype=torch.float32), knots)
    assert np.allclose(t.numpy(), unit, atol=1e-6)
    back = unit_to_hu(torch.linspace(-1, 1, 9), knots)
    assert np.allclose(back.numpy(), unit_to_hu(np.linspace(-1, 1, 9), knots), atol=1e-3)
    assert unit_to_hu(np.array([1.5]), knots, clip=True)[0] == pytest.approx(1000.0)


def test_robust_normalize_maps_percentiles_to_unit_range_inside_the_mask():
    rng = np.random.default_rng(1)
    image = np.zeros((20, 20, 20), np.float32)
    mask = np.zeros(image.shape, bool)
    mask[5:15, 5:15, 5:15] = True
    image[mask] = rng.uniform(100, 300, mask.sum())
    out, (lo, hi) = robust_normalize(image, mask, lower=1, upper=99)
    inside = image[mask]
    assert lo == pytest.approx(np.percentile(inside, 1)) and hi == pytest.approx(np.percentile(inside, 99))
    assert out.min() == -1.0 and out.max() == 1.0 and out.dtype == np.float32
    # background (0) is below p_lo -> clipped to -1; ~1% of body voxels clip at each end
    assert np.all(out[~mask] == -1.0)
    assert 0.005 < np.mean(out[mask] == 1.0) < 0.02
    # linear in between
    mid = (inside > lo) & (inside < hi)
    np.testing.assert_allclose(out[mask][mid], 2 * (inside[mid] - lo) / (hi - lo) - 1, atol=1e-5)


def test_robust_normalize_without_mask_and_errors():
    x = np.linspace(0, 100, 101)
    y, (lo, hi) = robust_normalize(x, lower=0, upper=100)
    assert (lo, hi) == (0.0, 100.0) and y[0] == -1 and y[-1] == 1
    with pytest.raises(ValueError, match="constant"):
        robust_normalize(np.ones((4, 4, 4)))
    with pytest.raises(ValueError, match="no voxels"):
        robust_normalize(x, mask=np.zeros(101, bool))
    with pytest.raises(ValueError, match="lower < upper"):
        robust_normalize(x, lower=60, upper=40)
    t, _ = robust_normalize(torch.arange(10.0))
    assert isinstance(t, torch.Tensor)
