"""Loading CT segmenters users bring: MONAI bundles, TorchScript + sidecar, TotalSegmentator."""

import json

import numpy as np
import pytest
import torch
import yaml

from medgen.errors import ModelError
from medgen.io.volume import Volume
from medgen.models.segmenters import InputSpec, load_segmenter, spec_from_monai_config

UNET_DEF = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
            "channels": [4, 8], "strides": [2], "num_res_units": 0}
NAMES = {"0": "background", "1": "liver", "2": "spleen"}


class Threshold(torch.nn.Module):
    """Oracle 'segmenter': class 1 where the scaled input is above 0 (HU > 0 for a [-1000, 1000] window)."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), x * 50.0], dim=1)


def _monai_bundle(tmp_path, net_def, *, weights=True):
    folder = tmp_path / "bundle"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    config = {
        "roi": [16, 16, 16],
        "network_def": net_def,
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0]},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0.0,
             "b_max": 1.0, "clip": True}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "@roi", "overlap": 0.5},
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    meta = {"network_data_format": {"outputs": {"pred": {"channel_def": NAMES}}}}
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    if weights:
        torch.manual_seed(0)
        from monai.networks.nets import UNet
        net = UNet(**{k: v for k, v in UNET_DEF.items() if k != "_target_"})
        torch.save(net.state_dict(), folder / "models" / "model.pt")
    return folder


def _ct(shape=(20, 18, 12), affine=None):
    rng = np.random.default_rng(0)
    arr = rng.normal(-200, 300, size=shape).astype(np.float32)
    return Volume(arr, np.diag([2.0, 2.0, 3.0, 1.0]) if affine is None else affine)


def test_monai_bundle_without_expressions_loads_and_reads_its_preprocessing(tmp_path):
    seg = load_segmenter(_monai_bundle(tmp_path, UNET_DEF))
    assert seg.label_names == {0: "background", 1: "liver", 2: "spleen"}
    assert seg.spec.spacing == (1.5, 1.5, 2.0)
    assert (seg.spec.a_min, seg.spec.a_max, seg.spec.b_min, seg.spec.b_max) == (-57, 164, 0.0, 1.0)
    assert seg.spec.patch_size == (16, 16, 16) and seg.spec.overlap == 0.5
    ct = _ct()
    out = seg.segment(ct)
    assert out.shape == ct.shape and np.allclose(out.affine, ct.affine)
    assert set(np.unique(out.array)) <= {0, 1, 2}


def test_bundle_with_expressions_needs_trust(tmp_path):
    net_def = dict(UNET_DEF, spatial_dims="$1 + 2")
    folder = _monai_bundle(tmp_path, net_def)
    with pytest.raises(ModelError, match="--trust-bundle"):
        load_segmenter(folder)
    seg = load_segmenter(folder, trust_bundle=True)  # ConfigParser evaluates "$1 + 2"
    assert seg.network.dimensions == 3


def test_bundle_with_unlisted_network_is_refused(tmp_path):
    folder = _monai_bundle(tmp_path, {"_target_": "os.system", "command": "true"})
    with pytest.raises(ModelError, match="allow-listed"):
        load_segmenter(folder)


def test_bundle_without_weights_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="model.pt"):
        load_segmenter(_monai_bundle(tmp_path, UNET_DEF, weights=False))


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_segmenter(tmp_path / "nope.ts")


def test_torchscript_with_sidecar_segments_on_the_input_grid(tmp_path):
    path = tmp_path / "thr.ts"
    torch.jit.script(Threshold()).save(str(path))
    with pytest.raises(ModelError, match="sidecar"):
        load_segmenter(path)
    (tmp_path / "thr.ts.yaml").write_text(yaml.safe_dump(
        {"spacing": None, "hu_window": [-1000, 1000], "patch_size": [8, 8, 8], "label_names": {0: "background", 1: "dense"}}))
    seg = load_segmenter(path)
    assert seg.label_names == {0: "background", 1: "dense"}
    # an LPS, anisotropic CT: the mask must be the threshold of the CT on its own grid
    affine = np.array([[-1.5, 0, 0, 30], [0, -1.0, 0, 20], [0, 0, 2.5, -10], [0, 0, 0, 1.0]])
    ct = _ct((17, 22, 9), affine)
    out = seg.segment(ct)
    assert out.shape == ct.shape and np.allclose(out.affine, affine)
    assert np.array_equal(out.array, (ct.array > 0).astype(out.array.dtype))


def test_torchscript_sidecar_with_unknown_keys_is_refused(tmp_path):
    path = tmp_path / "thr.ts"
    torch.jit.script(Threshold()).save(str(path))
    (tmp_path / "thr.json").write_text(json.dumps({"label_names": {"0": "bg"}, "hu_widow": [0, 1]}))
    with pytest.raises(ModelError, match="unknown sidecar keys"):
        load_segmenter(path)


def test_totalsegmentator_missing_package_is_a_clear_error():
    pytest.importorskip("pytest")
    try:
        import totalsegmentator  # noqa: F401
        pytest.skip("TotalSegmentator is installed here")
    except ImportError:
        pass
    with pytest.raises(ModelError, match="pip install TotalSegmentator"):
        load_segmenter("totalsegmentator:total:fast")


def test_input_spec_scaling_matches_monai_semantics():
    spec = spec_from_monai_config({"preprocessing": [{"_target_": "ScaleIntensityRanged", "a_min": -100, "a_max": 300,
                                                      "b_min": 0, "b_max": 1, "clip": True}]})
    assert np.allclose(spec.scale(np.array([-200, -100, 100, 300, 900])), [0, 0, 0.5, 1, 1])
    assert InputSpec().scale(np.array([0.0]))[0] == 0.0
