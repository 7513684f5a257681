"""Inputs that used to be accepted silently (or crash with a traceback) are refused with one line.

Each case exits 2 with ``PATH: what is wrong. Fix: ...`` before any work (no run folder, no MLflow
run), or, inside a batch, fails that case naming the file: NIfTI without geometry, a DICOM SEG as
the image, label ids above int32, invalid TorchScript sidecars and ``medgen.json`` values, invalid
training settings (``--max-steps -1``, ``train.steps=-5``, ``batch_size=0``, zero spacing or patch,
``lr=nan``), ``translate -o out/sct.txt`` and an evaluation whose volumes do not overlap.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from medgen.cli import main
from medgen.errors import InputError, ModelError
from medgen.io.readers import check_volume, read_volume
from medgen.io.volume import Volume


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Fix:" in err and "Traceback" not in err, err
    return err


def nifti_without_geometry(path: Path) -> Path:
    """A NIfTI as stored by a broken exporter: pixdim 0, sform_code 0, qform_code 0 (nibabel would repair it)."""
    raw = path.with_suffix("")  # .nii
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32), None), str(raw))
    data = bytearray(raw.read_bytes())
    data[80:92] = struct.pack("<3f", 0.0, 0.0, 0.0)  # pixdim[1:4]
    path.write_bytes(gzip.compress(bytes(data)))
    raw.unlink()
    return path


def test_nifti_without_geometry_is_refused_naming_the_header_fields(tmp_path, capsys):
    path = nifti_without_geometry(tmp_path / "nogeo.nii.gz")
    with pytest.raises(InputError, match=r"nogeo.nii.gz: has no defined geometry: sform_code 0, qform_code 0 and "
                                         r"pixdim\[1:4\] = \[0.0, 0.0, 0.0\]"):
        read_volume(path)
    # in a batch the case fails, naming the file (exit 1), instead of being processed as 1 mm LAS
    assert main(["preprocess", str(path), "-o", str(tmp_path / "out"), "--modality", "mr", "--no-mlflow", "-q"]) == 1
    assert "has no defined geometry" in (tmp_path / "out" / "manifest.csv").read_text()


def test_label_ids_above_int32_are_refused():
    for dtype, top in ((np.int64, 2**31), (np.uint32, 2**32 - 1), (np.float64, 3e9)):
        array = np.zeros((4, 4, 4), dtype)
        array[1, 1, 1] = top
        with pytest.raises(InputError, match="above the 32-bit range"):
            check_volume(Volume(array, np.eye(4), source="big_ids.nii.gz"), kind="label")
    ok = np.zeros((4, 4, 4), np.int64)
    ok[0, 0, 0] = 2**31 - 1
    assert check_volume(Volume(ok, np.eye(4)), kind="label").array.max() == 2**31 - 1


@pytest.mark.real_data
def test_a_dicom_seg_given_as_the_image_is_refused(sample_data, tmp_path, capsys):
    seg = sample_data / "dcmqi_ct_seg" / "liver.dcm"
    if not seg.exists():
        pytest.skip(f"{seg} not found")
    with pytest.raises(InputError, match="is a DICOM SEG object .* not an image"):
        read_volume(seg)
    assert read_volume(seg, kind="label").shape[:2] == (512, 512)  # label readers decide for themselves
    assert main(["preprocess", str(seg), "-o", str(tmp_path / "out"), "--modality", "ct", "--no-mlflow", "-q"]) == 1
    assert "is a DICOM SEG object" in (tmp_path / "out" / "manifest.csv").read_text()


# ---------------------------------------------------------------------------------------------
# model descriptions: TorchScript sidecar, medgen.json
# ---------------------------------------------------------------------------------------------

class _Threshold(torch.nn.Module):
    def forward(self, x):
        return torch.cat([torch.zeros_like(x), x], dim=1)


GOOD_SIDECAR = {"spacing": None, "hu_window": [-1000, 1000], "patch_size": [16, 16, 16],
                "label_names": {0: "background", 1: "bright"}}


@pytest.mark.parametrize("change, fragment", [
    ({"spacing": [-2.0, 2.0, 2.0]}, "'spacing.0': Input should be greater than 0"),
    ({"spacing": [0.0, 2.0, 2.0]}, "'spacing.0': Input should be greater than 0"),
    ({"hu_window": [40, 40]}, "hu_window [40, 40] is empty or reversed"),
    ({"overlap": 1.0}, "'overlap': Input should be less than 1"),
    ({"patch_size": [16, 0, 16]}, "'patch_size"),
    ({"label_names": None}, "label_names"),
])
def test_invalid_torchscript_sidecars_are_one_model_error(tmp_path, change, fragment):
    from medgen.models.segmenters import load_segmenter
    model = tmp_path / "seg.ts"
    torch.jit.script(_Threshold()).save(str(model))
    side = {**GOOD_SIDECAR, **change}
    Path(f"{model}.yaml").write_text(yaml.safe_dump({k: v for k, v in side.items() if v is not None}))
    with pytest.raises(ModelError) as info:
        load_segmenter(model)
    assert "seg.ts.yaml" in info.value.one_line() and fragment in info.value.one_line(), info.value.one_line()


def _segmenter_bundle(folder: Path) -> Path:
    from medgen.models.bundle import BundleSpec, save_bundle
    from medgen.networks.registry import build_network
    network = {"name": "monai.UNet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                                "channels": [4, 8], "strides": [2]}}
    spec = BundleSpec(kind="segmenter", network=network, label_names={0: "background", 1: "liver"},
                      extra={"input": {"spacing": [2.0, 2.0, 2.0], "a_min": -300.0, "a_max": 400.0,
                                       "patch_size": [16, 16, 16], "overlap": 0.25}})
    save_bundle(folder, spec, build_network(network["name"], network["kwargs"]))
    return folder


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d["network"]["kwargs"].update(featurez=8), "takes no argument(s) ['featurez']"),
    (lambda d: d.pop("network"), "'network': Field required"),
    (lambda d: d["extra"]["input"].update(a_max=-300.0), "HU window (a_min, a_max) [-300, -300] is empty"),
    (lambda d: d["extra"]["input"].update(spacing=[2.0, -1.0, 2.0]), "'extra.input.spacing"),
    (lambda d: d["extra"]["input"].update(overlap=1.0), "overlap"),
])
def test_invalid_medgen_json_is_one_model_error(tmp_path, edit, fragment):
    from medgen.models.segmenters import load_segmenter
    bundle = _segmenter_bundle(tmp_path / "bundle")
    desc = json.loads((bundle / "medgen.json").read_text())
    edit(desc)
    (bundle / "medgen.json").write_text(json.dumps(desc))
    with pytest.raises(ModelError) as info:
        load_segmenter(bundle)
    line = info.value.one_line()
    assert "medgen.json: invalid medgen.json" in line and "Fix:" in line, line
    assert fragment in line or fragment.split("'")[1] in line, line


def test_a_valid_bundle_still_loads(tmp_path):
    from medgen.models.segmenters import load_segmenter
    assert load_segmenter(_segmenter_bundle(tmp_path / "bundle")).label_names == {0: "background", 1: "liver"}


# ---------------------------------------------------------------------------------------------
# training settings, through the CLI: refused before a run folder or MLflow run exists
# ---------------------------------------------------------------------------------------------

SEGMENTER = ["train", "segmenter", "--images", "nope_ct.nii.gz", "--labels", "nope_seg.nii.gz",
             "--label-names", "names.json"]
TRANSLATOR = ["train", "translator", "--mr", "nope_mr.nii.gz", "--ct", "nope_ct.nii.gz"]


@pytest.mark.parametrize("args, fragment", [
    (SEGMENTER + ["--max-steps", "-1"], "--max-steps: invalid config: 'train.steps': Input should be greater than"),
    (TRANSLATOR + ["--max-steps", "0"], "--max-steps: invalid config: 'train.steps'"),
    (SEGMENTER + ["--set", "train.steps=-5"], "'train.steps': Input should be greater than or equal to 1"),
    (TRANSLATOR + ["--set", "train.steps=-5"], "'train.steps': Input should be greater than or equal to 1"),
    (SEGMENTER + ["--set", "data.batch_size=0"], "'data.batch_size'"),
    (TRANSLATOR + ["--set", "data.batch_size=0"], "'data.batch_size'"),
    (SEGMENTER + ["--set", "data.spacing=[0,2,2]"], "'data.spacing.0'"),
    (SEGMENTER + ["--set", "data.patch_size=[0,16,16]"], "'data.patch_size.0'"),
    (TRANSLATOR + ["--set", "data.patch_size=[64,0]"], "'data.patch_size.1'"),
    (SEGMENTER + ["--set", "train.lr=.nan"], "'train.lr'"),
    (TRANSLATOR + ["--set", "train.lr=.nan"], "'train.lr'"),
    (["train", "generator", "--labels", "nope.nii.gz", "--images", "nope_ct.nii.gz", "--set", "train.lr_g=.inf"],
     "'train.lr_g'"),
])
def test_invalid_training_settings_are_refused_before_a_run_exists(tmp_path, capsys, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main([*args, "-o", str(out), "--device", "cpu", "-q"]) == 2
    assert fragment in _one_line_error(capsys)
    assert not out.exists() and not list(tmp_path.rglob("mlflow.db"))


# ---------------------------------------------------------------------------------------------
# output names and evaluation geometry
# ---------------------------------------------------------------------------------------------

def test_translate_into_a_file_named_folder_is_refused(tmp_path, capsys):
    mr = tmp_path / "mr.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), str(mr))
    out = tmp_path / "out" / "sct.txt"
    assert main(["translate", "-i", str(mr), "-o", str(out), "-m", str(tmp_path / "no_model"), "-q"]) == 2
    assert f"{out}: ends in '.txt', a file extension, but a batch writes a folder here" in _one_line_error(capsys)
    assert not out.exists()


def test_evaluate_segmentation_says_when_the_volumes_do_not_overlap(tmp_path, capsys):
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[3:7, 3:7, 3:7] = 1
    far = np.eye(4)
    far[:3, 3] = (500.0, 0.0, 0.0)  # half a metre to the right
    nib.save(nib.Nifti1Image(labels, np.eye(4)), str(tmp_path / "ref.nii.gz"))
    nib.save(nib.Nifti1Image(labels, far), str(tmp_path / "pred.nii.gz"))
    assert main(["evaluate", "segmentation", "--pred", str(tmp_path / "pred.nii.gz"),
                 "--ref", str(tmp_path / "ref.nii.gz"), "-q"]) == 2
    err = _one_line_error(capsys)
    assert "pred.nii.gz: does not overlap the reference" in err and "in world space" in err
    assert "500..510" in err  # the prediction's extent, in mm
