"""Intensity-balanced centre sampling: rare intensities are drawn at the tempered rate, seeded."""

import numpy as np
import pytest

from medgen.data.sampling import VolumeSampler


def _soft_tissue_with_bone() -> tuple[np.ndarray, np.ndarray]:
    """A 40^3 body that is 99% soft tissue (0.0) and 1% 'bone' (0.9), plus a rim of air outside."""
    vol = np.full((40, 40, 40), -1.0, np.float32)
    vol[5:35, 5:35, 5:35] = 0.0
    vol[10:13, 10:13, 5:35] = 0.9  # 270 of 27000 body voxels: 1%
    return vol, vol > -0.5


def _bone_fraction(balance: float, n: int = 4000, seed: int = 0) -> float:
    vol, mask = _soft_tissue_with_bone()
    sampler = VolumeSampler([vol], [mask], patch_size=(4, 4), foreground_prob=1.0, intensity_balance=balance,
                            intensity_bins=8, seed=seed)
    return float(np.mean([vol[sampler._centre(0)] > 0.5 for _ in range(n)]))


def test_zero_balance_draws_body_voxels_uniformly():
    assert _bone_fraction(0.0) == pytest.approx(0.01, abs=0.006)


@pytest.mark.parametrize("balance", [0.5, 1.0])
def test_balance_tempers_bin_frequencies(balance):
    # two occupied bins with 26730 and 270 voxels: P(bone) = 270**(1-b) / (270**(1-b) + 26730**(1-b))
    expected = 270 ** (1 - balance) / (270 ** (1 - balance) + 26730 ** (1 - balance))
    assert _bone_fraction(balance) == pytest.approx(expected, abs=0.03)


def test_balanced_sampling_stays_in_body_and_is_seeded():
    vol, mask = _soft_tissue_with_bone()
    a = VolumeSampler([vol], [mask], patch_size=(8, 8), context=3, foreground_prob=1.0, intensity_balance=0.5, seed=7)
    b = VolumeSampler([vol], [mask], patch_size=(8, 8), context=3, foreground_prob=1.0, intensity_balance=0.5, seed=7)
    first, second = a.sample(12), b.sample(12)
    assert np.array_equal(first.image.numpy(), second.image.numpy())
    assert bool((first.mask[:, 1, 4, 4] == 1).all())
    state = a.state_dict()
    again = a.sample(3).image
    a.load_state_dict(state)
    assert np.array_equal(a.sample(3).image.numpy(), again.numpy())


def test_balance_out_of_range_is_rejected():
    vol, mask = _soft_tissue_with_bone()
    with pytest.raises(ValueError, match="intensity_balance"):
        VolumeSampler([vol], [mask], patch_size=(4, 4), intensity_balance=1.5)
