"""The bad-input table of the README's Troubleshooting section, each row run through the CLI.

Every row: one clear error line that names the file (or config key) and a fix, a non-zero exit
code, no partial output, and in a batch the other cases still processed. Rows already tested
elsewhere (mostly below the CLI, in the module that raises the error) are listed in
:data:`COVERED_ELSEWHERE`; a test checks that those tests still exist, so the table cannot rot.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import yaml

from medgen.cli import main
from medgen.data.phantoms import make_phantom
from medgen.io.dicom_write import write_dicom_series
from medgen.io.volume import Volume
from medgen.io.writers import write_volume

REPO = Path(__file__).resolve().parents[2]

#: table row -> tests (file::function) that already cover it, outside this module.
COVERED_ELSEWHERE = {
    "truncated / corrupt .nii.gz": [
        "tests/io/test_io_bad_inputs.py::test_truncated_nifti",
        "tests/pipelines/test_preprocess_pipeline.py::test_batch_records_bad_cases_writes_good_ones_and_resumes"],
    "non-image file with an image extension": [
        "tests/io/test_io_bad_inputs.py::test_non_image_file_with_nifti_extension",
        "tests/cli/test_cli_preprocess.py::test_bad_cases_give_exit_code_1_with_a_summary_naming_the_files",
        "tests/inference/test_segment.py::test_batch_continues_past_a_bad_scan_and_resumes"],
    "empty folder": ["tests/cli/test_cli_preprocess.py::test_empty_folder_is_an_up_front_error",
                     "tests/io/test_io_bad_inputs.py::test_empty_folder_and_folder_without_dicom"],
    "DICOM folder with several series": ["tests/io/test_io_bad_inputs.py::test_folder_with_two_series_lists_them"],
    "DICOM missing slice / uneven spacing": ["tests/io/test_io_bad_inputs.py::test_dicom_series_with_a_missing_slice",
                                             "tests/io/test_io_bad_inputs.py::test_dicom_series_with_uneven_spacing"],
    "2D image / 4D volume": ["tests/io/test_io_bad_inputs.py::test_2d_images", "tests/io/test_io_bad_inputs.py::test_4d_images",
                             "tests/pipelines/test_preprocess_pipeline.py::test_batch_records_bad_cases_writes_good_ones_and_resumes"],
    "NaN voxels": ["tests/io/test_io_bad_inputs.py::test_nan_voxels"],
    "constant volume / MR passed as CT": [
        "tests/pipelines/test_preprocess_pipeline.py::test_batch_records_bad_cases_writes_good_ones_and_resumes",
        "tests/cli/test_cli_preprocess.py::test_bad_cases_give_exit_code_1_with_a_summary_naming_the_files"],
    "image and label grids do not match": [
        "tests/training/test_segmenter_training.py::test_grid_mismatch_names_both_files_and_voxel_order_is_resolved"],
    "label ids the label-name file does not know": [
        "tests/training/test_segmenter_training.py::test_label_ids_without_names_are_an_error"],
    "missing or wrong model file": ["tests/models/test_segmenter_loaders.py::test_missing_model_path_is_a_clear_error",
                                    "tests/models/test_segmenter_loaders.py::test_bundle_without_weights_is_a_clear_error"],
    "bundle that needs code execution": ["tests/models/test_segmenter_loaders.py::test_bundle_with_expressions_needs_trust"],
    "config unknown key / wrong type": [
        "tests/cli/test_cli_basics.py::test_unknown_config_key_is_one_line_listing_valid_keys",
        "tests/cli/test_cli_basics.py::test_wrong_config_type_is_one_line", "tests/core/test_config.py::test_wrong_type_names_key"],
}


def test_rows_covered_elsewhere_still_have_their_tests():
    for row, tests in COVERED_ELSEWHERE.items():
        for test in tests:
            path, name = test.split("::")
            source = (REPO / path).read_text() if (REPO / path).exists() else ""
            assert re.search(rf"^def {name}\(", source, re.M), f"{row}: {test} is gone; update the README table"


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("one_thread")


def _phantom(seed: int = 0):
    return make_phantom(seed, shape=(32, 32, 12), spacing=(6.0, 6.0, 8.0))


def _series(folder: Path, seed: int = 0, **kwargs) -> Path:
    p = _phantom(seed)
    return write_dicom_series(Volume(p.ct, p.affine), folder, modality="CT", **kwargs)


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]


def _manifest(out: Path) -> dict[str, dict]:
    with open(out / "manifest.csv", newline="") as fh:
        return {row["case_id"]: row for row in csv.DictReader(fh)}


def _assert_batch(out: Path, err: list[str], good: set[str], bad: dict[str, tuple[str, ...]]) -> None:
    """Good cases written, each bad case failed with its message, and no output of a bad case."""
    rows = _manifest(out)
    for case in good:
        assert rows[case]["status"] == "ok" and (out / f"{case}.nii.gz").exists()
    for case, fragments in bad.items():
        assert rows[case]["status"] == "failed"
        line = next(line for line in err if f"FAILED {case}:" in line)
        for fragment in (*fragments, "Fix:"):
            assert fragment in line, f"{case}: {fragment!r} not in {line!r}"
        assert not list(out.glob(f"{case}*")), f"partial output of {case}"
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


# ---------------------------------------------------------------------------------------------
# batches: one bad input among good ones (preprocess: exit code 1, the others are processed)
# ---------------------------------------------------------------------------------------------
def test_dicom_and_non_finite_inputs_fail_alone_in_a_batch(tmp_path, capsys):
    src = tmp_path / "in"
    good = _series(src / "good_series", seed=1)
    a = _series(tmp_path / "tmp_a", seed=2, series_description="venous")
    b = _series(tmp_path / "tmp_b", seed=3, series_description="arterial")
    mixed = src / "two_series"
    mixed.mkdir()
    for prefix, folder in (("a", a), ("b", b)):
        for f in folder.glob("*.dcm"):
            shutil.copy(f, mixed / f"{prefix}_{f.name}")
    missing = _series(src / "missing_slice", seed=4)
    (missing / "IM00006.dcm").unlink()
    uneven = _series(src / "uneven", seed=5)
    ds = pydicom.dcmread(uneven / "IM00007.dcm")
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y, z + 3.0]
    ds.save_as(uneven / "IM00007.dcm")
    p = _phantom(6)
    inf = p.ct.copy()
    inf[4, 5, 6] = np.inf
    write_volume(Volume(inf, p.affine), src / "with_inf.nii.gz")
    out = tmp_path / "out"
    inputs = [str(good), str(mixed), str(missing), str(uneven), str(src / "with_inf.nii.gz")]
    capsys.readouterr()
    assert main(["preprocess", *inputs, "-o", str(out), "--modality", "ct", "--no-mlflow", "-q"]) == 1
    err = _error_lines(capsys)
    uid_a = pydicom.dcmread(next(a.glob("*.dcm"))).SeriesInstanceUID
    _assert_batch(out, err, {"good_series"}, {
        "two_series": ("two_series", "venous", "arterial", uid_a, "--series-uid"),
        "missing_slice": ("missing_slice", "missing slice"),
        "uneven": ("uneven", "uneven slice spacing"),
        "with_inf": ("with_inf.nii.gz", "NaN/Inf"),
    })
    # the fix works: the same folder with --series-uid
    assert main(["preprocess", str(mixed), "-o", str(tmp_path / "picked"), "--modality", "ct", "--series-uid", uid_a,
                 "--no-mlflow", "-q"]) == 0


def test_ct_passed_as_mr_fails_alone_in_an_mr_batch(tmp_path, capsys):
    p = _phantom(0)
    write_volume(Volume(p.mr, p.affine), tmp_path / "in" / "an_mr.nii.gz")
    write_volume(Volume(p.ct, p.affine), tmp_path / "in" / "a_ct.nii.gz")
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["preprocess", str(tmp_path / "in"), "-o", str(out), "--modality", "mr", "--no-mlflow", "-q"]) == 1
    _assert_batch(out, _error_lines(capsys), {"an_mr"}, {"a_ct": ("a_ct.nii.gz", "looks like CT, not MR")})


def test_label_grid_mismatch_fails_alone_in_a_batch(tmp_path, capsys):
    src = tmp_path / "in"
    for name, seed in (("good", 0), ("shifted", 1)):
        p = _phantom(seed)
        write_volume(Volume(p.ct, p.affine), src / name / "ct.nii.gz")
        labels = p.labels if name == "good" else p.labels[:, :, :10]  # 10 slices where the CT has 12
        write_volume(Volume(labels, p.affine), tmp_path / "labels" / name / "labels.nii.gz")
    out = tmp_path / "out"
    capsys.readouterr()
    rc = main(["preprocess", str(src / "good" / "ct.nii.gz"), str(src / "shifted" / "ct.nii.gz"), "--labels",
               str(tmp_path / "labels" / "good" / "labels.nii.gz"), str(tmp_path / "labels" / "shifted" / "labels.nii.gz"),
               "-o", str(out), "--modality", "ct", "--no-mlflow", "-q"])
    assert rc == 1
    _assert_batch(out, _error_lines(capsys), {"good"},
                  {"shifted": ("shifted/labels.nii.gz", "does not match the image grid", "shifted/ct.nii.gz")})
    assert (out / "good_label.nii.gz").exists()


# ---------------------------------------------------------------------------------------------
# single commands: exit code 2, one line, nothing written
# ---------------------------------------------------------------------------------------------
class _Threshold(torch.nn.Module):
    def forward(self, x):
        return torch.cat([torch.zeros_like(x), x * 50.0], dim=1)


def _inputs(tmp: Path) -> dict[str, Path]:
    p = _phantom(0)
    paths = {"mr": write_volume(Volume(p.mr, p.affine), tmp / "mr.nii.gz"),
             "ct": write_volume(Volume(p.ct, p.affine), tmp / "ct.nii.gz"),
             "labels": write_volume(Volume(p.labels, p.affine), tmp / "ct_seg.nii.gz")}
    torch.jit.script(_Threshold()).save(str(tmp / "oracle.ts"))
    (tmp / "oracle.ts.yaml").write_text(yaml.safe_dump({"spacing": None, "hu_window": [-1000, 1000],
                                                        "patch_size": [16, 16, 16],
                                                        "label_names": {0: "background", 1: "bright"}}))
    paths["oracle"] = tmp / "oracle.ts"
    return paths


def _monai_bundle(folder: Path, network_def: dict) -> Path:
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    config = {"network_def": network_def,
              "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "overlap": 0.5}}
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    (folder / "configs" / "metadata.json").write_text(json.dumps(
        {"network_data_format": {"outputs": {"pred": {"channel_def": {"0": "background", "1": "liver"}}}}}))
    from monai.networks.nets import UNet
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=[4, 8], strides=[2], num_res_units=0)
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    return folder


def _write_bad(tmp: Path, kind: str, paths: dict[str, Path]) -> tuple[list[str], Path, tuple[str, ...]]:
    """(argv, an output that must not exist afterwards, fragments of the error line)."""
    out = tmp / "out"
    seg_mr = ["segment-mr", "-i", str(paths["mr"]), "-o", str(out / "mask.nii.gz"), "--translator", "none",
              "--device", "cpu"]
    if kind == "missing model file":
        return [*seg_mr, "--segmenter", str(tmp / "nope.ts")], out / "mask.nii.gz", ("nope.ts", "does not exist")
    if kind == "wrong model file (text named .ts)":
        (tmp / "junk.ts").write_text("this is not TorchScript")
        (tmp / "junk.ts.yaml").write_text((tmp / "oracle.ts.yaml").read_text())
        return [*seg_mr, "--segmenter", str(tmp / "junk.ts")], out / "mask.nii.gz", ("junk.ts",)
    if kind == "translator folder that is not a bundle":
        (tmp / "not_a_bundle").mkdir()
        return (["translate", "-i", str(paths["mr"]), "-o", str(out / "sct.nii.gz"), "-m", str(tmp / "not_a_bundle")],
                out / "sct.nii.gz", ("not_a_bundle", "medgen.json"))
    if kind == "bundle needing code execution":
        marker = tmp / "PWNED"
        bundle = _monai_bundle(tmp / "bundle", {
            "_target_": "monai.networks.nets.UNet", "spatial_dims": f"$__import__('pathlib').Path('{marker}').touch() or 3",
            "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2], "num_res_units": 0})
        return [*seg_mr, "--segmenter", str(bundle)], marker, ("bundle", "--trust-bundle")
    if kind == "empty input folder":
        (tmp / "empty").mkdir()
        argv = [*seg_mr, "--segmenter", str(paths["oracle"])]
        argv[argv.index(str(paths["mr"]))] = str(tmp / "empty")
        return argv, out / "mask.nii.gz", ("empty", "is an empty folder")
    if kind == "config with an unknown key":
        (tmp / "bad.yaml").write_text("model:\n  featurez: 8\n")
        return (["train", "translator", "-c", str(tmp / "bad.yaml"), "--mr", str(paths["mr"]), "--ct", str(paths["ct"]),
                 "-o", str(out)], out, ("bad.yaml", "model.featurez", "valid keys"))
    if kind == "config value of a wrong type":
        return (["train", "generator", "--images", str(paths["ct"]), "--labels", str(paths["labels"]), "-o", str(out),
                 "--set", "train.steps=many", "--no-mlflow"], out, ("train.steps", "integer"))
    if kind == "label ids the label-name file does not know":
        (tmp / "names.json").write_text(json.dumps({"0": "background", "3": "liver"}))
        return (["train", "generator", "--images", str(paths["ct"]), "--labels", str(paths["labels"]), "--label-names",
                 str(tmp / "names.json"), "-o", str(out), "--no-mlflow", "--max-steps", "1"],
                out / "checkpoints", ("ct_seg.nii.gz", "does not name", "names.json"))
    raise KeyError(kind)


SINGLE_COMMAND_ROWS = ["missing model file", "wrong model file (text named .ts)", "translator folder that is not a bundle",
                       "bundle needing code execution", "empty input folder", "config with an unknown key",
                       "config value of a wrong type", "label ids the label-name file does not know"]


@pytest.mark.parametrize("kind", SINGLE_COMMAND_ROWS)
def test_single_command_rows_fail_with_one_clear_line_and_no_output(tmp_path, capsys, kind):
    paths = _inputs(tmp_path)
    argv, must_not_exist, fragments = _write_bad(tmp_path, kind, paths)
    capsys.readouterr()
    assert main(argv) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1, lines
    for fragment in (*fragments, "Fix:"):
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert not must_not_exist.exists()
    out = tmp_path / "out"
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file() and p.suffix in (".gz", ".pt", ".png")]
