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
    with pytest.raises(ValueError, match="hi > lo"):
        hu_to_unit(np.zeros(3), (100, 100))


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
