"""Translation of whole volumes: geometry round trips, output range, blending, precision, CLI."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from medgen.cli import main
from medgen.data.phantoms import make_phantom
from medgen.inference.translate import load_translator, translate_array, translate_preprocessed, translate_volume
from medgen.io.readers import read_volume
from medgen.io.volume import Volume
from medgen.io.writers import write_volume
from medgen.pipelines.train_translator import export_translator
from medgen.runtime import seed_everything
from medgen.training.translator import TranslatorConfig, build_networks

# bf16 vs fp32 inference of the same model: mean absolute difference of the synthetic CTs inside
# the body, in HU. Measured 2.2 HU mean (13 HU max) on these phantoms with random tiny models;
# on the trained MRI-DIR model see the report (bench/translator_mridir.py). Stated bound:
BF16_TOLERANCE_HU = 10.0


pytestmark = pytest.mark.usefixtures("one_thread")


def _bundle(folder, spatial_dims=2, context=3, **extra_model):
    model = {"spatial_dims": spatial_dims, "context": context, "features": 4, "n_blocks": 1, **extra_model}
    data = {"patch_size": [16, 16] if spatial_dims == 2 else [16, 16, 8]}
    inference = {} if spatial_dims == 2 else {"window_size": [32, 32, 16]}
    config = TranslatorConfig.model_validate({"model": model, "data": data, "inference": inference,
                                              "preprocess": {"ct": {"modality": "ct", "ct": {"window": [-1000, 1500]}}}})
    seed_everything(0)
    generator = build_networks(config.model)["g_mr2ct"]
    return export_translator(folder, config, generator, steps=0)


@pytest.fixture(scope="module")
def bundle_25d(tmp_path_factory):
    return _bundle(tmp_path_factory.mktemp("b25"))


def _mr(seed=0, shape=(48, 40, 16)):
    p = make_phantom(seed, shape=shape)
    return Volume(p.mr, p.affine), p


def _oblique_lps(volume: Volume) -> Volume:
    """The same voxels stored LPS with a rotated (oblique) affine and negated slice direction."""
    flip = np.diag([-1.0, -1.0, -1.0, 1.0])
    angle = np.deg2rad(17)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return Volume(np.ascontiguousarray(volume.array[::-1, ::-1, ::-1]), rot @ volume.affine @ np.array(
        [[1, 0, 0, volume.shape[0] - 1], [0, 1, 0, volume.shape[1] - 1], [0, 0, 1, volume.shape[2] - 1], [0, 0, 0, 1]])
        @ flip, "oblique.nii.gz")


def test_identity_network_round_trips_through_blending():
    """A network that returns its input gives back the input: stacks are assembled and blended right."""
    class Same(torch.nn.Module):
        size_multiple = 4

        def forward(self, x):
            return x

    image = np.random.default_rng(0).uniform(-1, 1, (18, 13, 7)).astype(np.float32)
    for blend in ("mean", "centre"):
        out = translate_array(Same(), image, spatial_dims=2, context=3, stack_blend=blend, batch_slices=3,
                              show_progress=False)
        assert np.allclose(out, image, atol=1e-6)
    out3 = translate_array(Same(), image, spatial_dims=3, window_size=[8, 8, 4], show_progress=False)
    assert np.allclose(out3, image, atol=1e-5)


def test_export_load_translate_preserves_geometry_and_range(bundle_25d, tmp_path):
    mr, p = _mr()
    oblique = _oblique_lps(mr)
    assert oblique.orientation != "RAS"
    translator = load_translator(bundle_25d)
    assert translator.context == 3 and translator.ct_window == (-1000.0, 1500.0)
    for volume in (mr, oblique):
        sct = translate_volume(volume, translator, device="cpu", precision="fp32", show_progress=False)
        assert sct.shape == volume.shape
        assert np.allclose(sct.affine, volume.affine)
        assert sct.array.dtype == np.float32
        assert sct.array.min() >= -1000.0 - 1e-3 and sct.array.max() <= 1500.0 + 1e-3
        outside = p.labels == 0
        if volume is oblique:
            outside = outside[::-1, ::-1, ::-1]
        assert np.median(sct.array[outside]) == pytest.approx(-1000.0)  # air stays air
    # the oblique LPS copy holds the same voxels: its synthetic CT is the same, voxel for voxel
    a = translate_volume(mr, translator, device="cpu", precision="fp32", show_progress=False).array
    b = translate_volume(oblique, translator, device="cpu", precision="fp32", show_progress=False).array
    assert np.abs(a - b[::-1, ::-1, ::-1]).max() < 1.0


def test_preprocessed_space_result(bundle_25d):
    mr, _ = _mr()
    out = translate_preprocessed(mr, bundle_25d, device="cpu", precision="fp32", show_progress=False)
    assert out.sct_unit.orientation == "RAS" and out.sct_unit.shape == out.sct_hu.shape
    assert np.all(np.abs(out.sct_unit.array) <= 1.0)
    assert np.allclose(out.sct_hu.array, (out.sct_unit.array + 1) * 1250 - 1000, atol=1e-2)


def test_bf16_matches_fp32_within_tolerance(bundle_25d):
    mr, p = _mr(seed=1)
    a = translate_volume(mr, bundle_25d, device="cpu", precision="fp32", show_progress=False).array
    b = translate_volume(mr, bundle_25d, device="cpu", precision="bf16", show_progress=False).array
    body = p.labels > 0
    diff = float(np.abs(a - b)[body].mean())
    assert diff < BF16_TOLERANCE_HU, diff


@pytest.mark.parametrize("dims,context", [(2, 1), (3, 1)])
def test_2d_and_3d_bundles_translate(tmp_path, dims, context):
    bundle = _bundle(tmp_path / "b", spatial_dims=dims, context=context)
    mr, _ = _mr(shape=(40, 36, 20))
    sct = translate_volume(mr, bundle, device="cpu", precision="fp32", show_progress=False)
    assert sct.same_grid(mr) and np.isfinite(sct.array).all()
    assert sct.array.max() > -1000.0  # something inside the body


def test_cli_translate_writes_on_the_input_grid_and_refuses_overwrite(bundle_25d, tmp_path):
    mr, _ = _mr()
    src = tmp_path / "mr_lps.nii.gz"
    write_volume(_oblique_lps(mr), src)
    out = tmp_path / "sct.nii.gz"
    args = ["translate", "-i", str(src), "-o", str(out), "-m", str(bundle_25d.parent / bundle_25d.name),
            "--device", "cpu", "--precision", "bf16", "-q"]
    assert main(args) == 0
    written, source = nib.load(str(out)), nib.load(str(src))
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert written.get_data_dtype() == np.int16
    assert main(args) == 2  # exists: refuses without --overwrite
    assert main(args + ["--overwrite"]) == 0
    assert main(["translate", "-i", str(src), "-o", str(src), "-m", str(bundle_25d), "--overwrite", "-q"]) == 2
    assert main(["translate", "-i", str(src), "-o", str(tmp_path / "x.nii.gz"), "-m", str(tmp_path), "-q"]) == 2


def test_run_dir_and_wrong_kind_are_resolved_or_refused(bundle_25d, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "bundle").symlink_to(bundle_25d, target_is_directory=True)
    assert load_translator(run).spatial_dims == 2
    desc = json.loads((bundle_25d / "medgen.json").read_text())
    other = tmp_path / "seg"
    (other / "models").mkdir(parents=True)
    (other / "configs").mkdir()
    (other / "configs" / "metadata.json").write_text("{}")
    (other / "medgen.json").write_text(json.dumps({**desc, "kind": "segmenter"}))
    from medgen.errors import ModelError
    with pytest.raises(ModelError, match="translator"):
        load_translator(other)


def test_3d_windows_see_a_thin_scan_go_on_along_the_body_not_end_in_air():
    """A 3-slice MR under a 16-slice window: every window slice holds the body, none is air."""
    from medgen.inference.translate import Translator, translate_result
    from medgen.transforms.recipes import PreprocessConfig, preprocess

    seen = []

    class Recorder(torch.nn.Module):
        size_multiple = 4

        def forward(self, x):
            seen.append(x.detach().clone())
            return x

    array = np.zeros((24, 20, 3), np.float32)  # air around a 16 x 12 body in every slice
    array[4:20, 4:16] = np.random.default_rng(0).uniform(400, 600, (16, 12, 3))
    mr = Volume(array, np.diag([2.0, 2.0, 4.0, 1.0]))
    recipe = PreprocessConfig.model_validate({"modality": "mr", "spacing": None, "crop": {"enabled": False}})
    translator = Translator(Recorder(), spatial_dims=3, context=1, ct_window=(-1000.0, 1000.0),
                            preprocess=recipe.model_dump(), settings={"window_size": [24, 20, 16],
                                                                      "mask_background": False})
    result = preprocess(mr, recipe)
    out = translate_result(translator, result, device=torch.device("cpu"), dtype=torch.float32,
                           show_progress=False)
    windows = torch.cat(seen)[:, 0]
    assert windows.shape[-1] == 16 and out.sct_unit.shape == result.image.shape
    # every one of the 16 window slices (13 of them repeated) holds the body (its 192 voxels, most
    # of them above -0.5 after the MR's percentile scaling); none is air
    assert (windows > -0.5).sum(dim=(1, 2)).min() > 100
