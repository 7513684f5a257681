"""Batch preprocessing: outputs, manifest, bad cases, resume (also after kill -9), workers, labels."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medgen.data.manifest import Manifest
from medgen.data.phantoms import make_phantom
from medgen.errors import InputError, OutputError
from medgen.io.readers import read_volume
from medgen.pipelines.preprocess import gather_cases, run_preprocess
from medgen.transforms.recipes import invert

SHAPE = (40, 36, 16)


def write_nifti(path: Path, array: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([2.0, 2.0, 3.0, 1.0]) if affine is None else affine), str(path))
    return path


def make_good_cases(folder: Path, n: int = 2, shape=SHAPE) -> list[str]:
    names = []
    for i in range(n):
        p = make_phantom(10 + i, shape=shape)
        write_nifti(folder / f"good{i}.nii.gz", p.ct, p.affine)
        write_nifti(folder / f"good{i}_seg.nii.gz", p.labels, p.affine)
        names.append(f"good{i}")
    return names


def make_bad_cases(folder: Path) -> dict[str, str]:
    """Bad inputs in one folder: case id -> a fragment the error message must contain."""
    good = make_phantom(1, shape=SHAPE)
    ok = write_nifti(folder / "tmp_ok.nii.gz", good.ct, good.affine).read_bytes()
    (folder / "tmp_ok.nii.gz").unlink()
    (folder / "truncated.nii.gz").write_bytes(ok[: len(ok) // 2])
    (folder / "not_an_image.nii.gz").write_text("patient list\nthis is not a NIfTI file\n")
    write_nifti(folder / "flat2d.nii.gz", np.zeros((32, 32), np.float32))
    write_nifti(folder / "fourd.nii.gz", np.zeros((8, 8, 8, 3), np.float32))
    nan = good.ct.copy()
    nan[5, 5, 5] = np.nan
    write_nifti(folder / "with_nan.nii.gz", nan, good.affine)
    write_nifti(folder / "constant.nii.gz", np.full(SHAPE, 40.0, np.float32), good.affine)
    write_nifti(folder / "mr_as_ct.nii.gz", good.mr, good.affine)
    return {"truncated": "truncated", "not_an_image": "cannot be read as NIfTI", "flat2d": "2D",
            "fourd": "4D", "with_nan": "NaN", "constant": "constant volume", "mr_as_ct": "looks like MR, not CT"}


def manifest_rows(out: Path) -> dict[str, dict]:
    with open(out / "manifest.csv", newline="") as fh:
        return {row["case_id"]: row for row in csv.DictReader(fh)}


def test_batch_records_bad_cases_writes_good_ones_and_resumes(tmp_path, caplog):
    inputs = tmp_path / "in"
    good = make_good_cases(inputs)
    bad = make_bad_cases(inputs)
    images = [p for p in sorted(inputs.iterdir()) if not p.name.endswith("_seg.nii.gz")]
    before = {p: p.read_bytes() for p in inputs.iterdir()}
    out = tmp_path / "out"
    summary = run_preprocess(images, out, modality="ct", labels=[inputs / f"{g}_seg.nii.gz" for g in good],
                             mlflow=False)
    assert summary.exit_code == 1
    assert sorted(summary.done) == good and sorted(summary.failed) == sorted(bad)
    rows = manifest_rows(out)
    for case_id, fragment in bad.items():
        row = rows[case_id]
        assert row["status"] == "failed" and fragment in row["error"], row["error"]
        assert f"{case_id}.nii.gz" in row["error"]  # names the file
        assert not any(p.name.startswith(case_id) for p in out.iterdir())  # no partial outputs
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    assert {p: p.read_bytes() for p in inputs.iterdir()} == before  # inputs untouched

    for case_id in good:
        row = rows[case_id]
        assert row["status"] == "ok" and row["modality"] == "ct" and row["original_shape"] == "40x36x16"
        assert row["original_spacing"] == "2x2x3" and row["original_orientation"] == "RAS"
        assert len(row["content_hash"]) == 64 and row["config_hash"]
        image = read_volume(out / row["output_path"])
        label = read_volume(out / row["label_path"], kind="label")
        mask = read_volume(out / row["mask_path"], kind="label")
        assert image.array.min() >= -1 and image.array.max() <= 1 and image.orientation == "RAS"
        assert label.same_grid(image) and mask.same_grid(image)
        record = json.loads((out / row["record_path"]).read_text())
        assert record["content_hash"] == row["content_hash"] and record["case_id"] == case_id
        back = invert(label, record, order=0)
        source_labels = read_volume(inputs / f"{case_id}_seg.nii.gz", kind="label")
        assert back.same_grid(source_labels)
        np.testing.assert_array_equal(back.array[source_labels.array > 0], source_labels.array[source_labels.array > 0])

    # re-run: done cases are skipped (outputs untouched), bad ones fail again
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name.startswith("good")}
    caplog.set_level("INFO", logger="medgen")
    again = run_preprocess(images, out, modality="ct", labels=[inputs / f"{g}_seg.nii.gz" for g in good],
                           mlflow=False)
    assert sorted(again.skipped) == good and not again.done and sorted(again.failed) == sorted(bad)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name.startswith("good")} == mtimes
    assert "skipped 2 case(s) already preprocessed" in caplog.text

    # a changed config redoes the cases (its own outputs are replaced without --overwrite)
    third = run_preprocess([inputs / "good0.nii.gz"], out, modality="ct", overrides=["crop.margin_mm=4"], mlflow=False)
    assert third.done == ["good0"] and manifest_rows(out)["good0"]["config_hash"] != rows["good0"]["config_hash"]
    assert manifest_rows(out)["with_nan"]["status"] == "failed"  # rows of other cases are kept


def test_interrupted_case_is_redone_but_foreign_files_are_not_overwritten(tmp_path):
    inputs = tmp_path / "in"
    make_good_cases(inputs, n=2)
    out = tmp_path / "out"
    assert run_preprocess([inputs / "good0.nii.gz"], out, modality="ct", mlflow=False).done == ["good0"]
    # good0 interrupted before its record was written (its other outputs are medgen's, in the ledger),
    # and a foreign file named like good1's output
    (out / "good0.json").unlink()
    (out / "good1.nii.gz").write_bytes(b"not ours")
    summary = run_preprocess([inputs / "good0.nii.gz", inputs / "good1.nii.gz"], out, modality="ct", mlflow=False)
    assert summary.done == ["good0"] and list(summary.failed) == ["good1"]
    assert "not written by medgen" in summary.failed["good1"] and "--overwrite" in summary.failed["good1"]
    assert "good1.nii.gz" in summary.failed["good1"]
    assert read_volume(out / "good0.nii.gz").shape[2] == SHAPE[2] and (out / "good0.json").is_file()
    assert (out / "good1.nii.gz").read_bytes() == b"not ours"
    summary = run_preprocess([inputs / "good1.nii.gz"], out, modality="ct", overwrite=True, mlflow=False)
    assert summary.done == ["good1"] and read_volume(out / "good1.nii.gz").orientation == "RAS"


def test_up_front_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="empty: is an empty folder"):
        run_preprocess([empty], tmp_path / "out", modality="ct", mlflow=False)
    with pytest.raises(InputError, match="does not exist"):
        run_preprocess([tmp_path / "missing.nii.gz"], tmp_path / "out", modality="ct", mlflow=False)
    make_good_cases(tmp_path / "in", n=1)
    with pytest.raises(InputError, match="--modality"):
        run_preprocess([tmp_path / "in"], tmp_path / "out", mlflow=False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="not writable"):
        run_preprocess([tmp_path / "in" / "good0.nii.gz"], blocker / "out", modality="ct", mlflow=False)
    with pytest.raises(InputError, match="matches 0 image cases"):
        run_preprocess([tmp_path / "in" / "good0.nii.gz"], tmp_path / "out", modality="ct",
                       labels=[tmp_path / "in" / "good0_seg.nii.gz", blocker], mlflow=False)


def test_cases_named_by_folder_and_paired_with_labels(tmp_path):
    for i in range(2):
        p = make_phantom(i, shape=(24, 24, 12))
        write_nifti(tmp_path / f"case{i}" / "ct.nii.gz", p.ct, p.affine)
        write_nifti(tmp_path / f"case{i}" / "labels.nii.gz", p.labels, p.affine)
    cases, paired = gather_cases([tmp_path / "case0" / "ct.nii.gz", tmp_path / "case1" / "ct.nii.gz"],
                                 [tmp_path / f"case{i}" / "labels.nii.gz" for i in range(2)])
    assert [c.case_id for c in cases] == ["case0", "case1"]
    assert paired == {f"case{i}": tmp_path / f"case{i}" / "labels.nii.gz" for i in range(2)}
    # a CSV case list (relative paths, optional labels)
    (tmp_path / "cases.csv").write_text("case_id,source_path,label_path\nA,case0/ct.nii.gz,case0/labels.nii.gz\n"
                                        "B,case1/ct.nii.gz,\n")
    summary = run_preprocess([tmp_path / "cases.csv"], tmp_path / "out", modality="ct", mlflow=False)
    assert summary.done == ["A", "B"]
    rows = manifest_rows(tmp_path / "out")
    assert rows["A"]["label_path"] == "A_label.nii.gz" and rows["B"]["label_path"] == ""


@pytest.mark.slow
def test_two_workers_give_the_same_outputs_as_one(tmp_path):
    inputs = tmp_path / "in"
    make_good_cases(inputs, n=3)
    (inputs / "broken.nii.gz").write_text("nope")
    images = sorted(p for p in inputs.iterdir() if "_seg" not in p.name)
    one = run_preprocess(images, tmp_path / "w1", modality="ct", mlflow=False, workers=1)
    two = run_preprocess(images, tmp_path / "w2", modality="ct", mlflow=False, workers=2)
    assert sorted(one.done) == sorted(two.done) == ["good0", "good1", "good2"]
    assert list(one.failed) == list(two.failed) == ["broken"]
    for case in one.done:
        a, b = read_volume(tmp_path / "w1" / f"{case}.nii.gz"), read_volume(tmp_path / "w2" / f"{case}.nii.gz")
        assert a.same_grid(b, atol=0) and np.array_equal(a.array, b.array)
        ra = json.loads((tmp_path / "w1" / f"{case}.json").read_text())
        rb = json.loads((tmp_path / "w2" / f"{case}.json").read_text())
        assert ra == rb
    assert [r["status"] for r in manifest_rows(tmp_path / "w1").values()] == \
        [r["status"] for r in manifest_rows(tmp_path / "w2").values()]


@pytest.mark.slow
def test_kill_9_then_rerun_finishes_without_redoing_or_partial_files(tmp_path):
    """The installed console script, killed with SIGKILL mid-batch, then the same command again."""
    medgen = shutil.which("medgen") or str(Path(sys.executable).parent / "medgen")
    inputs = tmp_path / "in"
    for i in range(8):
        p = make_phantom(20 + i, shape=(80, 80, 40))
        write_nifti(inputs / f"case{i}.nii.gz", p.ct, p.affine)
    out = tmp_path / "out"
    command = [medgen, "preprocess", str(inputs), "-o", str(out), "--modality", "ct", "--no-mlflow", "-q"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    killed = False
    while time.time() < deadline and proc.poll() is None:
        if (out / "manifest.csv").exists() and "ok" in [r["status"] for r in Manifest(out / "manifest.csv").rows.values()]:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    manifest_rows(out)  # always a complete, parseable CSV
    rows = Manifest(out / "manifest.csv").rows  # CSV + the journal of cases finished since its last rewrite
    done_first = {c for c, r in rows.items() if r["status"] == "ok"}
    assert done_first and (not killed or len(done_first) < 8)
    mtimes = {c: (out / f"{c}.nii.gz").stat().st_mtime_ns for c in done_first}
    from medgen.cli import main
    assert main(["preprocess", str(inputs), "-o", str(out), "--modality", "ct", "--no-mlflow", "-q"]) == 0
    rows = manifest_rows(out)
    assert all(r["status"] == "ok" for r in rows.values()) and len(rows) == 8
    assert {c: (out / f"{c}.nii.gz").stat().st_mtime_ns for c in done_first} == mtimes
    assert not [p for p in out.iterdir() if ".tmp" in p.name] and not (out / "manifest.journal.jsonl").exists()
    for row in rows.values():
        assert read_volume(out / row["output_path"]).array.max() <= 1.0


def test_manifest_journal_survives_a_crash_between_rewrites(tmp_path):
    path = tmp_path / "manifest.csv"
    m = Manifest(path)
    m.update({"case_id": "a", "status": "pending"})
    m.save()
    m.commit({"case_id": "a", "status": "ok", "output_path": "a.nii.gz"})
    m.commit({"case_id": "b", "status": "failed", "error": "b.nii.gz: broken"})
    with open(m.journal, "a") as fh:
        fh.write('{"case_id": "c", "sta')  # torn last line of a kill -9
    assert manifest_rows(tmp_path)["a"]["status"] == "pending"  # the CSV is still the last complete one
    again = Manifest(path)
    assert again.rows["a"]["status"] == "ok" and again.rows["b"]["error"] == "b.nii.gz: broken"
    assert "c" not in again.rows
    again.save()
    assert not again.journal.exists() and manifest_rows(tmp_path)["a"]["output_path"] == "a.nii.gz"
