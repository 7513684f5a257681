"""``medgen segment``: plain segmentation of files, DICOM series and batches, with any segmenter form."""

from __future__ import annotations

import json

import numpy as np
import pytest
from seg_models import NAMES, medgen_segmenter_bundle, threshold_torchscript

from medgen.cli import main
from medgen.data.phantoms import make_phantom
from medgen.io.geometry import reorient
from medgen.io.readers import read_volume
from medgen.io.volume import Volume
from medgen.io.writers import write_volume

pytestmark = pytest.mark.usefixtures("one_thread")


def _ct(seed: int = 3, orientation: str = "LPS") -> Volume:
    p = make_phantom(seed, shape=(40, 36, 20), spacing=(3.0, 3.0, 5.0))
    return reorient(Volume(p.ct, p.affine), orientation)


def test_segment_one_ct_file_mask_on_its_grid_labels_json_and_one_mlflow_run(tmp_path):
    ct = _ct()
    src = write_volume(ct, tmp_path / "ct.nii.gz")
    model = threshold_torchscript(tmp_path / "model")
    out = tmp_path / "out" / "mask.nii.gz"
    assert main(["segment", "-q", "-i", str(src), "-o", str(out), "-m", str(model), "--device", "cpu",
                 "--precision", "fp32"]) == 0
    mask = read_volume(out, kind="label")
    assert mask.shape == ct.shape and np.allclose(mask.affine, ct.affine, atol=1e-5)
    np.testing.assert_array_equal(mask.array, (ct.array > 0).astype(np.uint8))  # the oracle's exact answer
    info = json.loads((tmp_path / "out" / "mask.labels.json").read_text())
    assert info["label_names"] == {"0": "background", "1": "bright"} and info["labels_found"] == ["bright"]
    assert info["segmenter"] == str(model) and info["orientation"] == "LPS"
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("medgen").experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["medgen.pipeline"] == "segment"
    assert runs[0].data.params["segmenter"] == str(model) and runs[0].data.metrics["ok"] == 1
    # existing outputs are refused without --overwrite: exit 2, nothing replaced
    before = out.stat().st_mtime_ns
    assert main(["segment", "-q", "-i", str(src), "-o", str(out), "-m", str(model), "--no-mlflow"]) == 2
    assert out.stat().st_mtime_ns == before


def test_segment_batch_with_a_medgen_bundle_isolates_failures_resumes_and_runs_workers(tmp_path):
    scans = tmp_path / "cts"
    scans.mkdir()
    for name, seed in (("a", 3), ("b", 4)):
        write_volume(_ct(seed, "RAS" if name == "a" else "LPS"), scans / f"{name}.nii.gz")
    (scans / "broken.nii.gz").write_bytes(b"not a nifti")
    bundle = medgen_segmenter_bundle(tmp_path / "seg")
    out = tmp_path / "masks"
    args = ["segment", "-q", "-i", str(scans), "-o", str(out), "-m", str(bundle), "--device", "cpu",
            "--precision", "fp32", "--no-mlflow"]
    assert main(args + ["--workers", "2"]) == 1  # one volume failed, the others finished
    summary = json.loads((out / "segment_summary.json").read_text())
    assert {c["case_id"]: c["status"] for c in summary["cases"]} == {"a": "ok", "b": "ok", "broken": "failed"}
    for name, seed in (("a", 3), ("b", 4)):
        mask = read_volume(out / f"{name}.nii.gz", kind="label")
        assert mask.shape == read_volume(scans / f"{name}.nii.gz").shape
        assert set(np.unique(mask.array)) <= set(NAMES) and len(np.unique(mask.array)) >= 2
        assert json.loads((out / f"{name}.labels.json").read_text())["label_names"]["1"] == "liver"
    (scans / "broken.nii.gz").unlink()
    assert main(args) == 0
    assert {c["status"] for c in json.loads((out / "segment_summary.json").read_text())["cases"]} == {"skipped"}


def test_segment_dicom_series_writes_a_seg_equal_to_the_mask(tmp_path):
    from medgen.io.dicom_seg import read_dicom_seg
    from medgen.io.dicom_write import write_dicom_series
    ct = _ct()
    series = write_dicom_series(ct.with_array(np.rint(ct.array)), tmp_path / "ct_dicom", modality="CT",
                                instance_order="shuffled")
    bundle = medgen_segmenter_bundle(tmp_path / "seg")
    out = tmp_path / "mask.nii.gz"
    assert main(["segment", "-q", "-i", str(series), "-o", str(out), "-m", str(bundle), "--dicom-seg",
                 "--no-mlflow", "--device", "cpu", "--precision", "fp32"]) == 0
    nifti = read_volume(out, kind="label")
    seg, names = read_dicom_seg(tmp_path / "mask_seg.dcm", series)
    assert nifti.array.any() and np.array_equal(seg.array, nifti.array)
    assert {names[i] for i in np.unique(seg.array) if i} <= set(NAMES.values())


def test_segment_bad_model_is_one_line_and_exit_2(tmp_path, capsys):
    src = write_volume(_ct(), tmp_path / "ct.nii.gz")
    assert main(["segment", "-i", str(src), "-o", str(tmp_path / "m.nii.gz"), "-m", str(tmp_path / "nope"),
                 "--no-mlflow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and "Fix:" in err[0] and not (tmp_path / "m.nii.gz").exists()
