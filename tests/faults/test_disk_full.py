"""Disk full and unwritable outputs: a clear error up front, never a half-written output.

Tests may run as root, where ``chmod`` does not stop writes; unwritable folders are therefore
simulated with a path under a regular file, a full disk with a patched ``shutil.disk_usage``
(up-front check) or an ``ENOSPC`` raised while a file is being committed (mid-run).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from medgen.cli import main
from medgen.data.phantoms import make_phantom
from medgen.io import atomic
from medgen.io.volume import Volume
from medgen.io.writers import write_volume

Usage = namedtuple("Usage", "total used free")
TINY_SEGMENTER = ["--no-mlflow", "--device", "cpu", "-q", "--set", "data.patch_size=[16,16,16]",
                  "--set", "network.channels=[4,8]", "--set", "network.strides=[2]", "--set", "data.spacing=null",
                  "--set", "train.checkpoint_every=2", "--set", "train.validate_every=100"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _cases(folder: Path, names=("a", "b", "c")) -> list[Path]:
    paths = []
    for i, name in enumerate(names):
        p = make_phantom(i, shape=(32, 32, 12), spacing=(6.0, 6.0, 8.0))
        paths.append(write_volume(Volume(p.ct, p.affine), folder / f"{name}.nii.gz"))
        write_volume(Volume(p.labels, p.affine), folder / "labels" / f"{name}.nii.gz")
    return paths


def _one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
    assert len(lines) == 1, lines
    return lines[0]


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp" in p.name or p.name.startswith(".medgen-write-test")]


def test_output_folder_under_a_regular_file_fails_before_any_work(tmp_path, capsys):
    _cases(tmp_path)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the output folder should go")
    assert main(["preprocess", str(tmp_path / "a.nii.gz"), "-o", str(blocker / "out"), "--modality", "ct",
                 "--no-mlflow"]) == 2
    line = _one_error_line(capsys)
    assert "not_a_folder/out" in line and "not writable" in line and "Fix:" in line
    assert main(["train", "segmenter", "--images", str(tmp_path / "a.nii.gz"), "--labels",
                 str(tmp_path / "labels" / "a.nii.gz"), "-o", str(blocker / "run"), "--max-steps", "2",
                 *TINY_SEGMENTER]) == 2
    line = _one_error_line(capsys)
    assert "not_a_folder/run" in line and "Fix:" in line
    assert blocker.read_text().startswith("a file")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes through chmod 0555")
def test_read_only_output_folder_fails_before_any_work(tmp_path, capsys):
    _cases(tmp_path)
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert main(["preprocess", str(tmp_path / "a.nii.gz"), "-o", str(out), "--modality", "ct",
                     "--no-mlflow"]) == 2
        assert "not writable" in _one_error_line(capsys)
        assert not list(out.iterdir())
    finally:
        out.chmod(0o755)


def test_too_little_free_space_is_refused_up_front(tmp_path, capsys, monkeypatch):
    _cases(tmp_path)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: Usage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))
    out = tmp_path / "out"
    images = [str(p) for p in sorted(tmp_path.glob("*.nii.gz"))]  # (-o inside an input folder is refused)
    assert main(["preprocess", *images, "-o", str(out), "--modality", "ct", "--no-mlflow"]) == 2
    line = _one_error_line(capsys)
    assert "1 MiB free" in line and "Fix: free disk space" in line
    assert not (out / "manifest.csv").exists() and not list(out.glob("*.nii.gz"))

    run = tmp_path / "run"
    assert main(["train", "segmenter", "--images", str(tmp_path / "a.nii.gz"), "--labels",
                 str(tmp_path / "labels" / "a.nii.gz"), "-o", str(run), "--max-steps", "2", *TINY_SEGMENTER]) == 2
    line = _one_error_line(capsys)
    assert str(run) in line and "MiB free" in line
    assert not (run / "checkpoints").exists()


def _enospc_for(monkeypatch, predicate) -> None:
    """Make committing a file whose name matches ``predicate`` fail as on a full disk."""
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if predicate(Path(dst).name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "replace", replace)


def test_disk_full_mid_batch_leaves_no_half_written_case(tmp_path, capsys, monkeypatch):
    _cases(tmp_path / "in")
    (tmp_path / "in" / "labels").rename(tmp_path / "labels")  # inputs: images only
    out = tmp_path / "out"
    _enospc_for(monkeypatch, lambda name: name.startswith("b") and name != "manifest.csv")
    assert main(["preprocess", str(tmp_path / "in"), "-o", str(out), "--modality", "ct", "--no-mlflow", "-q"]) == 1
    err = capsys.readouterr().err
    assert "FAILED b:" in err and "No space left on device" in err and "Fix:" in err
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith("b")]  # nothing of b, not even a temporary file
    assert {"a.nii.gz", "a.json", "c.nii.gz", "c.json", "manifest.csv"} <= set(names)
    assert _no_temp_files(out)
    monkeypatch.undo()  # space freed: the same command finishes b only
    assert main(["preprocess", str(tmp_path / "in"), "-o", str(out), "--modality", "ct", "--no-mlflow", "-q"]) == 0
    assert (out / "b.nii.gz").exists() and (out / "b.json").exists()


def test_disk_full_while_checkpointing_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    _cases(tmp_path, names=("a",))
    run = tmp_path / "run"
    args = ["train", "segmenter", "--images", str(tmp_path / "a.nii.gz"), "--labels",
            str(tmp_path / "labels" / "a.nii.gz"), "-o", str(run), "--max-steps", "4", *TINY_SEGMENTER]
    _enospc_for(monkeypatch, lambda name: name == "step_00000004.pt")
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert "step_00000004.pt" in line and "No space left on device" in line and "Fix:" in line
    index = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert [e["step"] for e in index] == [2]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.json", "step_00000002.pt"]
    assert not (run / "bundle").exists() and _no_temp_files(run)
    monkeypatch.undo()
    assert main([*args, "--resume"]) == 0
    assert json.loads((run / "checkpoints" / "latest.json").read_text())[-1]["step"] == 4
    assert (run / "bundle" / "models" / "model.pt").exists()
    shutil.rmtree(run)
