"""A training's run folder is claimed before any work: locked, and medgen's (new, empty or marked).

A training writes and replaces ``checkpoints/``, ``metrics.jsonl`` and ``bundle/`` in its run
folder, so a folder of the user's files is refused with one line and left byte for byte as it
was; a second training into a folder another training holds is refused at once; the run marker
lets the same folder be resumed and extended, and a run folder of a medgen from before the marker
(it has ``checkpoints/latest.json``) is still accepted.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medgen.cli import main
from medgen.data.phantoms import make_phantom
from medgen.io.outdir import RUN_MARKER, claim_run_dir
from medgen.io.volume import Volume
from medgen.io.writers import write_volume

TINY_SEGMENTER = ["--no-mlflow", "--device", "cpu", "-q", "--set", "data.patch_size=[16,16,16]",
                  "--set", "network.channels=[4,8]", "--set", "network.strides=[2]", "--set", "data.spacing=null",
                  "--set", "train.checkpoint_every=1", "--set", "train.validate_every=100"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(tmp_path: Path, run: Path, steps: int, *extra: str) -> int:
    if not (tmp_path / "a.nii.gz").exists():
        p = make_phantom(0, shape=(32, 32, 12), spacing=(6.0, 6.0, 8.0))
        write_volume(Volume(p.ct, p.affine), tmp_path / "a.nii.gz")
        write_volume(Volume(p.labels, p.affine), tmp_path / "labels" / "a.nii.gz")
    return main(["train", "segmenter", "--images", str(tmp_path / "a.nii.gz"), "--labels",
                 str(tmp_path / "labels" / "a.nii.gz"), "-o", str(run), "--max-steps", str(steps), *extra,
                 *TINY_SEGMENTER])


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_of_user_files_is_refused_and_left_as_it_was(tmp_path, capsys):
    run = tmp_path / "my_models"
    (run / "bundle" / "models").mkdir(parents=True)
    (run / "bundle" / "models" / "model.pt").write_bytes(b"the user's own weights")
    (run / "metrics.jsonl").write_text('{"mine": 1}\n')
    before = _snapshot(run)
    capsys.readouterr()
    assert _train(tmp_path, run, 2) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1, lines
    assert f"{run}: holds files no medgen training wrote (bundle, metrics.jsonl)" in lines[0] and "Fix:" in lines[0]
    assert _snapshot(run) == before  # nothing replaced, nothing added (no marker, no checkpoints)
    assert sorted(p.name for p in run.iterdir()) == ["bundle", "metrics.jsonl"]


def test_a_batch_output_folder_is_not_a_run_folder(tmp_path, capsys):
    run = tmp_path / "out"
    run.mkdir()
    (run / ".medgen-outputs.jsonl").write_text("")  # a preprocess / translate batch folder
    capsys.readouterr()
    assert _train(tmp_path, run, 1) == 2
    assert "holds files no medgen training wrote (.medgen-outputs.jsonl)" in _error_lines(capsys)[0]
    assert not (run / "checkpoints").exists()


def test_a_second_training_into_a_held_run_folder_refuses_at_once(tmp_path, capsys):
    run = tmp_path / "run"
    with claim_run_dir(run, command="medgen train segmenter (the test)"):
        capsys.readouterr()
        assert _train(tmp_path, run, 2) == 2
        lines = _error_lines(capsys)
    assert len(lines) == 1 and f"{run}: is in use by another medgen run (pid {os.getpid()}" in lines[0], lines
    assert not (run / "checkpoints").exists()  # it did no work


def test_the_marked_run_folder_resumes_and_a_pre_marker_run_is_accepted(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(tmp_path, run, 2) == 0
    marker = (run / RUN_MARKER).read_text()
    assert '"command": "medgen train segmenter"' in marker
    assert _train(tmp_path, run, 3, "--resume") == 0
    assert (run / RUN_MARKER).read_text() == marker  # written once, by the first training
    assert (run / "checkpoints" / "step_00000003.pt").exists()

    (run / RUN_MARKER).unlink()  # a run folder written before the marker existed
    assert _train(tmp_path, run, 4, "--resume") == 0
    assert (run / "checkpoints" / "step_00000004.pt").exists() and (run / RUN_MARKER).is_file()
    assert not (run / ".medgen.lock.json").exists()  # the claim is released when training ends
    with claim_run_dir(run):  # and can be taken again at once
        pass
