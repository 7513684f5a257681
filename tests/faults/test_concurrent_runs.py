"""Concurrent runs, with real parallel processes: one output folder, one new SQLite MLflow store.

* a second batch into a folder another run holds refuses at once with one line naming the holder
  (or, with ``MEDGEN_LOCK_TIMEOUT``, waits), and two runs into one folder never lose manifest rows;
* two processes opening the same new ``sqlite:///`` store at the same moment both succeed (store
  creation is serialised; "database is locked" is retried);
* a run killed with ``kill -9`` is RUNNING in MLflow until the next run into its folder marks it KILLED.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import pytest

from medgen.data.phantoms import make_phantom
from medgen.io.outdir import claim_output_dir

PREP = ["--modality", "ct", "--no-mlflow", "-q"]


def _env(**extra) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    return {**env, **extra}


def _cases(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        p = make_phantom(60 + i, shape=(28, 28, 10), spacing=(4.0, 4.0, 6.0))
        nib.save(nib.Nifti1Image(p.ct, p.affine), str(folder / f"{name}.nii.gz"))


def _medgen(*args: str, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "medgen", *args], env=_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _rows(out: Path) -> dict[str, dict]:
    with open(out / "manifest.csv", newline="") as fh:
        return {row["case_id"]: row for row in csv.DictReader(fh)}


def test_a_second_run_into_a_locked_folder_refuses_with_one_line(tmp_path, capsys):
    """The lock is an OS file lock: a second holder, even in this process, is refused."""
    from medgen.cli import main

    _cases(tmp_path / "in", ["a"])
    out = tmp_path / "out"
    with claim_output_dir(out, command="medgen preprocess (the test)"):
        capsys.readouterr()
        assert main(["preprocess", str(tmp_path / "in"), "-o", str(out), *PREP]) == 2
        err = capsys.readouterr().err
    assert f"{out}: is in use by another medgen run (pid {os.getpid()}" in err and "Fix:" in err
    assert len(err.strip().splitlines()) == 1
    assert not (out / "manifest.csv").exists()  # it did no work


def test_two_runs_into_one_folder_keep_every_row(tmp_path):
    _cases(tmp_path / "in1", ["a1"])
    _cases(tmp_path / "in2", ["b1"])
    out = tmp_path / "out"
    procs = [_medgen("preprocess", str(tmp_path / name), "-o", str(out), *PREP, MEDGEN_LOCK_TIMEOUT="120")
             for name in ("in1", "in2")]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    rows = _rows(out)
    assert sorted(rows) == ["a1", "b1"] and all(r["status"] == "ok" for r in rows.values())
    # and nothing is redone: both reruns skip their cases
    from medgen.pipelines.preprocess import run_preprocess
    assert sorted(run_preprocess([tmp_path / "in1", tmp_path / "in2"], out, modality="ct", mlflow=False).skipped) \
        == ["a1", "b1"]


_OPEN_RUN = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from medgen.tracking import start_run
    out, go, hold = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "hold"
    while not go.exists():
        time.sleep(0.01)
    with start_run("train_test", output_dir=out) as tracker:
        tracker.log_params({"pid": os.getpid()})
        tracker.log_metrics({"loss": 1.0}, step=1)
        (out / f"run_{os.getpid()}.txt").write_text(tracker.run_id)
        while hold:
            time.sleep(1)
""")


def _open_run(out: Path, go: Path, hold: bool = False, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _OPEN_RUN, str(out), str(go), "hold" if hold else "end"],
                            env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _statuses(uri: str) -> dict[str, str]:
    from mlflow import MlflowClient
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("medgen")
    return {r.info.run_id: r.info.status for r in client.search_runs([experiment.experiment_id])}


def test_concurrent_first_use_of_one_new_sqlite_store(tmp_path):
    pytest.importorskip("mlflow")
    db = tmp_path / "shared" / "mlflow.db"
    uri = f"sqlite:///{db}"
    go = tmp_path / "go"
    procs = [_open_run(tmp_path / f"run{i}", go, MLFLOW_TRACKING_URI=uri) for i in range(2)]
    time.sleep(4)  # both have imported MLflow and wait at the barrier
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
    statuses = _statuses(uri)
    assert len(statuses) == 2 and set(statuses.values()) == {"FINISHED"}
    assert Path(f"{db}.lock").exists()  # creation went through the lock


def test_a_killed_runs_mlflow_run_is_marked_killed_by_the_next_run(tmp_path):
    pytest.importorskip("mlflow")
    from medgen.tracking import default_tracking_uri, start_run

    out, go = tmp_path / "out", tmp_path / "go"
    go.touch()
    proc = _open_run(out, go, hold=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("run_*.txt")) and proc.poll() is None:
        time.sleep(0.05)
    assert list(out.glob("run_*.txt")), proc.communicate()[1][-3000:]
    killed_id = next(out.glob("run_*.txt")).read_text()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    uri = default_tracking_uri(out)
    assert _statuses(uri)[killed_id] == "RUNNING"
    with start_run("train_test", output_dir=out) as tracker:
        new_id = tracker.run_id
    statuses = _statuses(uri)
    assert statuses[killed_id] == "KILLED" and statuses[new_id] == "FINISHED"


def test_database_is_locked_is_retried_and_other_errors_are_not(monkeypatch):
    from medgen import tracking
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    calls = []

    @tracking.retry_locked
    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert flaky() == "ok" and len(calls) == 3

    @tracking.retry_locked
    def broken():
        calls.append(1)
        raise ValueError("no such table: experiments")

    calls.clear()
    with pytest.raises(ValueError, match="no such table"):
        broken()
    assert len(calls) == 1
