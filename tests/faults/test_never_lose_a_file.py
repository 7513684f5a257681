"""Never lose a user's file: batch reruns, foreign files, input folder as output, temp files, modes.

Through the CLI (``medgen.cli.main``), as a user would hit it. The acceptance test runs a
``preprocess`` and a ``segment-mr`` batch twice each, with user-owned files of the same names as
medgen's outputs in the output folder and with the input folder as the output folder, and checks
that every byte of every file medgen did not write is unchanged.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nibabel as nib
import pytest
import torch
import yaml

from medgen.cli import main
from medgen.data.phantoms import make_phantom

SHAPE = (32, 32, 12)
PREP = ["--modality", "ct", "--no-mlflow", "-q"]


def _nifti(path: Path, array, affine) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _cases(folder: Path, n: int = 2, *, modality: str = "ct") -> list[Path]:
    """``c0.nii.gz``... (CT) or ``scan0.nii.gz``... (MR) phantoms in ``folder``."""
    paths = []
    for i in range(n):
        p = make_phantom((30 if modality == "ct" else 40) + i, shape=SHAPE, spacing=(4.0, 4.0, 6.0))
        name = f"c{i}" if modality == "ct" else f"scan{i}"
        paths.append(_nifti(folder / f"{name}.nii.gz", p.ct if modality == "ct" else p.mr, p.affine))
    return paths


def _snapshot(paths) -> dict[Path, bytes]:
    return {Path(p): Path(p).read_bytes() for p in paths}


def _unchanged(snapshot: dict[Path, bytes]) -> None:
    for path, data in snapshot.items():
        assert path.is_file(), f"{path} was removed"
        assert path.read_bytes() == data, f"{path} was changed"


class _Threshold(torch.nn.Module):
    """An oracle 'segmenter': class 1 where the scaled input is above 0."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), x * 50.0], dim=1)


def _oracle(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "oracle.ts"
    torch.jit.script(_Threshold()).save(str(model))
    Path(f"{model}.yaml").write_text(yaml.safe_dump({"spacing": None, "hu_window": [-1000, 1000],
                                                     "patch_size": [16, 16, 16],
                                                     "label_names": {0: "background", 1: "bright"}}))
    return model


def test_issue_reproduction_a_failed_case_never_deletes_the_users_file(tmp_path, capsys):
    """``head -c 20000 some.nii.gz > in/b.nii.gz; echo notes > out/b.json``; preprocess twice."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    good = _cases(inputs, n=1)[0]
    (inputs / "b.nii.gz").write_bytes(good.read_bytes()[:2000])
    out.mkdir()
    (out / "b.json").write_text("notes\n")
    user = _snapshot([out / "b.json", *inputs.iterdir()])
    assert main(["preprocess", str(inputs), "-o", str(out), *PREP]) == 1
    _unchanged(user)
    assert main(["preprocess", str(inputs), "-o", str(out), *PREP]) == 1
    _unchanged(user)
    # a user's file named like a GOOD case's output: that case fails naming it, nothing else changes
    (out / "c0.json").unlink()
    (out / "c0.json").write_text("my own c0 notes")
    user = _snapshot([out / "c0.json", out / "b.json"])
    capsys.readouterr()
    assert main(["preprocess", str(good), "-o", str(out), *PREP]) == 1
    err = capsys.readouterr().err
    assert "c0.json: already exists and was not written by medgen" in err and "--overwrite" in err
    _unchanged(user)


def test_output_folder_equal_to_or_inside_an_input_folder_is_refused(tmp_path, capsys):
    inputs = tmp_path / "scans"
    _cases(inputs, n=1)
    user = _snapshot(inputs.iterdir())
    for out in (inputs, inputs / "prep"):
        assert main(["preprocess", str(inputs), "-o", str(out), *PREP]) == 2
        err = capsys.readouterr().err
        assert "outputs would mix with (and be read back as) inputs" in err and "Fix:" in err
        assert err.count("\n") == 1  # one line
    assert sorted(p.name for p in inputs.iterdir()) == ["c0.nii.gz"]
    _unchanged(user)


def test_hidden_and_temp_files_are_never_inputs_and_stale_temps_are_cleaned(tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    good = _cases(inputs, n=1)[0]
    (inputs / ".c0.nii.gz.k3j9x0qa.tmp.nii.gz").write_bytes(good.read_bytes()[:500])  # a torn write of kill -9
    (inputs / ".hidden.nii.gz").write_bytes(good.read_bytes())
    out.mkdir()
    stale = [out / ".c0.nii.gz.ab12cd34.tmp.nii.gz", out / ".manifest.csv.zz99yy88.tmp.csv",
             out / "..gone.in_progress.k3j9x0ab.tmp.in_progress"]  # a batch marker's torn write
    for path in stale:
        path.write_bytes(b"torn")
    (out / ".medgen.mhd.q1w2e3r4.tmp").mkdir()  # a detached writer's temp folder
    (out / ".users_notes").write_text("keep me")
    (out / ".c0.nii.gz.backup").write_text("keep me too")
    user = _snapshot([out / ".users_notes", out / ".c0.nii.gz.backup", *inputs.iterdir()])
    assert main(["preprocess", str(inputs), "-o", str(out), *PREP]) == 0
    rows = (out / "manifest.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("c0,ok")  # only the visible case
    assert not any(p.exists() for p in stale) and not (out / ".medgen.mhd.q1w2e3r4.tmp").exists()
    _unchanged(user)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_honour_the_umask(tmp_path, umask):
    inputs, out = tmp_path / "in", tmp_path / "out"
    _cases(inputs, n=1)
    old = os.umask(umask)
    try:
        assert main(["preprocess", str(inputs), "-o", str(out), *PREP]) == 0
    finally:
        os.umask(old)
    for name in ("c0.nii.gz", "c0_mask.nii.gz", "c0.json", "manifest.csv"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask, name


def test_acceptance_preprocess_and_segment_mr_twice_never_touch_user_files(tmp_path, one_thread):
    # --- preprocess: user files named like every output of c0, and the input folder as output
    ct_in, prep = tmp_path / "ct", tmp_path / "prep"
    _cases(ct_in, n=2)
    prep.mkdir()
    for name in ("c0.nii.gz", "c0_mask.nii.gz", "c0.json"):
        (prep / name).write_bytes(b"user's own " + name.encode())
    (prep / "notes.txt").write_text("mine")
    user = _snapshot([*prep.iterdir(), *ct_in.iterdir()])
    for _ in range(2):
        assert main(["preprocess", str(ct_in), "-o", str(prep), *PREP]) == 1  # c0 refused, c1 written
        _unchanged(user)
        assert main(["preprocess", str(ct_in), "-o", str(ct_in), *PREP]) == 2  # input folder as output
        _unchanged(user)
    assert (prep / "c1.nii.gz").is_file() and sorted(p.name for p in ct_in.iterdir()) == ["c0.nii.gz", "c1.nii.gz"]

    # --- segment-mr batch: user files named like scan0's mask, labels JSON and summary
    mr_in, masks = tmp_path / "mr", tmp_path / "masks"
    _cases(mr_in, n=2, modality="mr")
    model = _oracle(tmp_path / "model")
    masks.mkdir()
    for name in ("scan0.nii.gz", "scan0.labels.json"):
        (masks / name).write_bytes(b"user's own " + name.encode())
    user = _snapshot([*masks.iterdir(), *mr_in.iterdir(), model, Path(f"{model}.yaml")])
    seg = ["segment-mr", "-q", "--translator", "none", "--segmenter", str(model), "--device", "cpu",
           "--precision", "fp32"]
    for _ in range(2):
        assert main([*seg, "-i", str(mr_in), "-o", str(masks)]) == 1  # scan0 refused (not skipped!), scan1 ok
        _unchanged(user)
        assert main([*seg, "-i", str(mr_in), "-o", str(mr_in)]) == 2
        _unchanged(user)
    assert (masks / "scan1.nii.gz").is_file() and sorted(p.name for p in mr_in.iterdir()) == \
        ["scan0.nii.gz", "scan1.nii.gz"]
    # a user's summary file of the same name is not replaced either
    (masks / "scan0.nii.gz").unlink()
    (masks / "scan0.labels.json").unlink()
    summary = masks / "segment_mr_summary.json"
    summary.unlink()
    summary.write_text("my summary")
    assert main([*seg, "-i", str(mr_in), "-o", str(masks)]) == 2
    assert summary.read_text() == "my summary"
