"""Image metrics on inputs with known answers."""

import math

import numpy as np
import pytest

from medgen.errors import InputError
from medgen.metrics.image import mae, psnr, ssim


def _img(seed=0, shape=(24, 20, 12)):
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    return ndimage.gaussian_filter(rng.normal(size=shape), 2) * 500


def test_identical_images_are_perfect():
    a = _img()
    assert mae(a, a) == 0
    assert psnr(a, a) == math.inf
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-9)
    assert ssim(a, a, per_slice=True) == pytest.approx(1.0, abs=1e-9)


def test_mae_and_psnr_known_values():
    ref = np.zeros((8, 8, 8))
    pred = ref + 10.0
    assert mae(pred, ref) == pytest.approx(10.0)
    # MSE = 100, range 2000 -> 20 log10(2000) - 20 = 46.02 dB
    assert psnr(pred, ref, data_range=2000) == pytest.approx(20 * math.log10(2000) - 20)


def test_mask_restricts_comparison():
    ref = np.zeros((8, 8, 8))
    pred = ref.copy()
    pred[:4] = 100.0
    mask = np.zeros(ref.shape, bool)
    mask[4:] = True
    assert mae(pred, ref) == pytest.approx(50.0)
    assert mae(pred, ref, mask) == 0.0


def test_ssim_drops_with_noise_and_is_symmetric():
    a = _img(1)
    noisy = a + np.random.default_rng(2).normal(scale=a.std(), size=a.shape)
    s = ssim(noisy, a, data_range=np.ptp(a))
    assert 0 < s < 0.9
    assert ssim(a, noisy, data_range=np.ptp(a)) == pytest.approx(s)


def test_shape_mismatch_and_empty_mask_are_input_errors():
    with pytest.raises(InputError):
        mae(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    with pytest.raises(InputError):
        mae(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), mask=np.zeros((2, 2, 2)))
