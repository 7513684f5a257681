"""The chain's speed-ups change nothing that matters: each one against the plain path it replaces.

* separable resampling (:func:`medgen.io.geometry._separable`) vs ``ndimage.affine_transform``:
  label maps exactly equal, images to float32 rounding (grids with exact half-voxel ties too);
* more sliding windows per forward pass (small windows) vs 2: the same class scores and mask;
* the ISA-L gzip writer: a standard gzip file that reads back bit-identical;
* the whole chain (random small networks, phantom MR) with all of them vs all off: masks equal,
  synthetic CT within 0.01 HU.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

import medgen.inference.segment as segment
import medgen.io.geometry as geometry
from medgen.io.volume import Volume

pytestmark = pytest.mark.usefixtures("one_thread")


def _affine_path(volume, affine, shape, order, cval=None):
    """The resampling as it was before the separable path (``ndimage.affine_transform``)."""
    saved = geometry._separable
    geometry._separable = lambda *args: None
    try:
        return geometry.resample_to_grid(volume, affine, shape, order=order, cval=cval)
    finally:
        geometry._separable = saved


def _grids(rng, n):
    for trial in range(n):
        spacing = rng.uniform(0.5, 3.0, 3)
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = rng.uniform(-20, 20, 3)
        target = np.diag([*rng.uniform(0.4, 3.0, 3), 1.0])
        # every third grid is shifted by whole half voxels: nearest-neighbour rounding ties
        shift = np.round(rng.uniform(-3, 3, 3)) * spacing / 2 if trial % 3 == 0 else rng.uniform(-5, 5, 3)
        target[:3, 3] = affine[:3, 3] + shift
        yield affine, target, tuple(int(s) for s in rng.integers(3, 30, 3)), tuple(int(s) for s in rng.integers(3, 40, 3))


def test_separable_resampling_matches_the_affine_path():
    rng = np.random.default_rng(0)
    used = 0
    for affine, target, src_shape, shape in _grids(rng, 40):
        labels = Volume(rng.integers(0, 6, src_shape).astype(np.uint8), affine)
        fast = geometry.resample_to_grid(labels, target, shape, order=0)
        assert np.array_equal(fast.array, _affine_path(labels, target, shape, 0).array)
        assert fast.array.dtype == np.uint8
        image = Volume((rng.normal(size=src_shape) * 1000).astype(np.float32), affine)
        fast = geometry.resample_to_grid(image, target, shape, order=1, cval=-1000.0)
        plain = _affine_path(image, target, shape, 1, cval=-1000.0)
        assert fast.array.dtype == plain.array.dtype == np.float32
        np.testing.assert_allclose(fast.array, plain.array, rtol=1e-6, atol=1e-3)
        used += geometry._separable(image.array, np.linalg.inv(affine) @ target, shape, 1, -1000.0) is not None
    assert used > 5  # the trilinear fast path was exercised, not only the fallback


def test_separable_resampling_leaves_rotated_grids_to_the_affine_path():
    angle = np.deg2rad(10)
    rotated = np.eye(4)
    rotated[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    assert geometry._separable(np.zeros((4, 4, 4), np.float32), rotated, (8, 8, 8), 1, 0.0) is None


def test_more_windows_per_pass_give_the_same_scores():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.InstanceNorm3d(4), torch.nn.ReLU(),
                              torch.nn.Conv3d(4, 3, 3, padding=1)).eval()
    image = np.random.default_rng(1).normal(size=(40, 36, 20)).astype(np.float32)
    two = segment.sliding_window_scores(net, image, patch_size=(16, 16, 8), batch_size=2)
    auto = segment.sliding_window_scores(net, image, patch_size=(16, 16, 8))
    assert segment.auto_batch_size((16, 16, 8)) == 8
    torch.testing.assert_close(auto, two, rtol=1e-5, atol=1e-6)
    assert torch.equal(auto.argmax(0), two.argmax(0))


def test_auto_batch_size_keeps_large_windows_small():
    assert segment.auto_batch_size((32, 32, 16)) == 8
    assert segment.auto_batch_size((64, 64, 32)) == 2
    assert segment.auto_batch_size((96, 96, 96)) == 2
    assert segment.auto_batch_size((160, 160, 160)) == 2


def test_isal_gzip_writer_reads_back_identical(tmp_path, monkeypatch):
    igzip = pytest.importorskip("isal.igzip")
    import nibabel as nib

    from medgen.io.writers import write_volume
    opened, real_open = [], igzip.open
    monkeypatch.setattr(igzip, "open", lambda *args, **kwargs: opened.append(args) or real_open(*args, **kwargs))
    volume = Volume(np.random.default_rng(2).normal(size=(30, 20, 10)).astype(np.float32),
                    np.diag([1.0, 2.0, 3.0, 1.0]))
    path = write_volume(volume, tmp_path / "v.nii.gz")
    assert len(opened) == 1  # written through ISA-L
    assert nib.openers.ImageOpener.compress_ext_map[".gz"][0].__name__ != "isal_open"  # nibabel's table restored
    gzip.decompress(path.read_bytes())  # a standard gzip stream
    image = nib.load(path)
    assert np.array_equal(np.asarray(image.dataobj), volume.array)
    np.testing.assert_array_equal(image.affine, volume.affine)


@pytest.fixture
def chain_models():
    from medgen.inference.translate import Translator
    from medgen.models.segmenters import InputSpec, NetworkSegmenter
    from medgen.networks.registry import build_network
    from medgen.networks.resnet_generator import ResnetGenerator
    torch.manual_seed(0)
    generator = ResnetGenerator(spatial_dims=2, in_channels=3, out_channels=3, features=4, n_blocks=1).eval()
    translator = Translator(generator, 2, 3, (-1000.0, 1000.0),
                            {"modality": "mr", "spacing": [3.0, 3.0, 4.0]}, {"batch_slices": 4})
    unet = build_network("monai.UNet", {"spatial_dims": 3, "in_channels": 1, "out_channels": 4, "channels": [4, 8],
                                        "strides": [2], "num_res_units": 1})
    segmenter = NetworkSegmenter(unet, InputSpec(spacing=(3.0, 3.0, 4.0), a_min=-300, a_max=400,
                                                 patch_size=(16, 16, 8)),
                                 {0: "background", 1: "a", 2: "b", 3: "c"})
    return translator, segmenter


def test_chain_with_the_fast_paths_equals_the_plain_chain(chain_models, monkeypatch):
    from medgen.data.phantoms import make_phantom
    from medgen.inference.chain import segment_mr_volume
    translator, segmenter = chain_models
    phantom = make_phantom(3, shape=(64, 56, 20), spacing=(1.5, 1.5, 2.0))  # up-sampled back: fast path used
    mr = Volume(phantom.mr.astype(np.float32), phantom.affine)
    fast = segment_mr_volume(mr, translator=translator, segmenter=segmenter, device="cpu", precision="fp32")
    monkeypatch.setattr(geometry, "_separable", lambda *args: None)
    monkeypatch.setattr(segment, "auto_batch_size", lambda patch_size: 2)
    plain = segment_mr_volume(mr, translator=translator, segmenter=segmenter, device="cpu", precision="fp32")
    assert np.array_equal(fast.mask.array, plain.mask.array)
    assert len(np.unique(plain.mask.array)) > 1
    np.testing.assert_allclose(fast.sct.array, plain.sct.array, atol=0.01)
