"""``medgen preprocess`` and ``medgen phantoms`` end to end, in process (``medgen.cli.main``)."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from medgen.cli import main
from medgen.io.readers import read_volume


def _rows(out):
    with open(out / "manifest.csv", newline="") as fh:
        return {row["case_id"]: row for row in csv.DictReader(fh)}


@pytest.mark.slow
def test_phantoms_then_preprocess_with_labels_and_mlflow(tmp_path, capsys):
    ph = tmp_path / "ph"
    assert main(["phantoms", "-o", str(ph), "-n", "2", "--seed", "5", "--shape", "40", "36", "16",
                 "--spacing", "2.5", "2.5", "4", "--mr-weighting", "t2", "-q"]) == 0
    assert sorted(p.name for p in (ph / "phantom_001").iterdir()) == ["ct.nii.gz", "labels.nii.gz", "mr.nii.gz"]
    names = json.loads((ph / "label_names.json").read_text())
    assert names["0"] == "background" and names["3"] == "liver"
    ct = read_volume(ph / "phantom_000" / "ct.nii.gz")
    assert ct.shape == (40, 36, 16) and np.allclose(ct.spacing, (2.5, 2.5, 4.0)) and ct.array.min() < -900
    # deterministic per seed: phantom_001 of seed 5 == phantom_000 of seed 6
    again = tmp_path / "again"
    assert main(["phantoms", "-o", str(again), "-n", "1", "--seed", "6", "--shape", "40", "36", "16",
                 "--spacing", "2.5", "2.5", "4", "--mr-weighting", "t2", "-q"]) == 0
    for name in ("ct", "mr", "labels"):
        a = nib.load(ph / "phantom_001" / f"{name}.nii.gz")
        b = nib.load(again / "phantom_000" / f"{name}.nii.gz")
        assert np.array_equal(a.get_fdata(), b.get_fdata()) and np.allclose(a.affine, b.affine)
    # existing outputs are refused without --overwrite (exit 2, one line naming the file)
    capsys.readouterr()
    assert main(["phantoms", "-o", str(again), "-n", "1", "--seed", "6", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "phantom_000/ct.nii.gz: already exists" in err[0] and "--overwrite" in err[0]

    out = tmp_path / "prep"
    code = main(["preprocess", str(ph / "phantom_000" / "ct.nii.gz"), str(ph / "phantom_001" / "ct.nii.gz"),
                 "--labels", str(ph / "phantom_000" / "labels.nii.gz"), str(ph / "phantom_001" / "labels.nii.gz"),
                 "-o", str(out), "--modality", "ct", "-q"])
    assert code == 0
    rows = _rows(out)
    assert sorted(rows) == ["phantom_000", "phantom_001"] and all(r["status"] == "ok" for r in rows.values())
    assert all(r["label_path"] for r in rows.values())
    # one MLflow run with the config, counts and the manifest as a dataset input
    info = json.loads((out / "mlflow_run.json").read_text())
    import mlflow
    mlflow.set_tracking_uri(info["tracking_uri"])
    run = mlflow.get_run(info["run_id"])
    assert run.data.params["ct.window"] == "[-1000.0, 1000.0]" and run.data.metrics["cases_done"] == 2
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.name == "preprocess-ct"


def test_bad_cases_give_exit_code_1_with_a_summary_naming_the_files(tmp_path, capsys):
    folder = tmp_path / "in"
    assert main(["phantoms", "-o", str(tmp_path / "ph"), "-n", "1", "--shape", "32", "32", "12", "-q"]) == 0
    folder.mkdir()
    (tmp_path / "ph" / "phantom_000" / "mr.nii.gz").rename(folder / "an_mr.nii.gz")
    (tmp_path / "ph" / "phantom_000" / "ct.nii.gz").rename(folder / "a_ct.nii.gz")
    (folder / "junk.nii.gz").write_bytes(b"\x1f\x8b garbage")
    capsys.readouterr()
    assert main(["preprocess", str(folder), "-o", str(tmp_path / "out"), "--modality", "ct", "--no-mlflow", "-q"]) == 1
    err = capsys.readouterr().err
    assert "preprocessed 1, skipped 0 (already done), failed 2" in err
    assert "FAILED an_mr:" in err and "an_mr.nii.gz: looks like MR, not CT" in err
    assert "FAILED junk:" in err and "junk.nii.gz" in err
    rows = _rows(tmp_path / "out")
    assert rows["a_ct"]["status"] == "ok" and rows["junk"]["status"] == "failed"
    # the MR is fine as an MR, in another folder
    assert main(["preprocess", str(folder / "an_mr.nii.gz"), "-o", str(tmp_path / "mr"), "-c", "preprocess/mr",
                 "--no-mlflow", "-q"]) == 0
    record = json.loads((tmp_path / "mr" / "an_mr.json").read_text())
    assert record["modality"] == "mr" and record["intensity"]["kind"] == "mr_percentile"


def test_empty_folder_is_an_up_front_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["preprocess", str(tmp_path / "empty"), "-o", str(tmp_path / "out"), "--modality", "mr", "--no-mlflow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty: is an empty folder" in err[0]
    assert not (tmp_path / "out" / "manifest.csv").exists()
