"""``--executor dask://HOST:PORT``: a batch on a real Dask cluster (a ``LocalCluster`` of 2 worker
processes on loopback, started and stopped here), with the same isolation, resume and summary
as the local pool, including a worker killed mid-batch."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install 'dask[distributed]')")

from medgen.errors import InputError  # noqa: E402
from medgen.io.atomic import write_text_atomic  # noqa: E402
from medgen.pipelines.batch import BatchJob, CaseReport, run_batch, write_summary  # noqa: E402
from medgen.pipelines.executor import parse_executor  # noqa: E402


def _work(path: Path, files, payload, *, case_id: str) -> CaseReport:
    """A case: ``ok``, ``raise`` (a bad case), ``kill_once`` (its first worker dies), ``kill`` (every worker dies)."""
    flag = path.with_suffix(".attempted")
    if payload == "kill" or (payload == "kill_once" and not flag.exists()):
        flag.touch()
        write_text_atomic(files[1], "partial")  # dies mid-case: the rerun removes this and redoes the case
        os.kill(os.getpid(), signal.SIGKILL)
    if payload == "raise":
        raise ValueError(f"cannot read {path.name}")
    write_text_atomic(files[0], f"{case_id} pid {os.getpid()}")
    return CaseReport(case_id, str(path), "ok", {"out": str(files[0])})


def _jobs(folder: Path, kinds: dict[str, str]) -> list[BatchJob]:
    return [BatchJob(name, str(folder / f"{name}.in"), files=[folder / f"{name}.txt", folder / f"{name}.part"],
                     done=[folder / f"{name}.txt"], fn=_work, payload=kind) for name, kind in kinds.items()]


@pytest.fixture(scope="module")
def dask_address():
    import cloudpickle
    import dask
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    with dask.config.set({"distributed.scheduler.allowed-failures": 1, "distributed.worker.daemon": False}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                           dashboard_address=None, worker_dashboard_address=None)
        try:
            yield "dask://" + cluster.scheduler_address.removeprefix("tcp://")
        finally:
            cluster.close()


def test_dask_batch_survives_a_killed_worker_and_resumes(tmp_path, dask_address):
    kinds = {"a": "ok", "b": "ok", "c": "ok", "bad": "raise", "flaky": "kill_once", "doomed": "kill"}
    reports, seconds = run_batch(_jobs(tmp_path, kinds), executor=dask_address, desc="test")
    status = {r.case_id: r.status for r in reports}
    assert status == {"a": "ok", "b": "ok", "c": "ok", "bad": "failed", "flaky": "ok", "doomed": "failed"}
    errors = {r.case_id: r.error for r in reports if r.error}
    assert "bad.in" in errors["bad"]  # the case's own one-line error, as in the local pool
    assert "rerun" in errors["doomed"] and "Dask" in errors["doomed"]
    assert (tmp_path / "flaky.txt").read_text().startswith("flaky")  # retried on a live worker, complete
    pids = {(tmp_path / f"{n}.txt").read_text().split()[-1] for n in ("a", "b", "c", "flaky")}
    # the cases ran in the cluster's worker processes, not in this one (how many workers took them
    # depends on Dask's scheduling after the kills: one surviving worker may take them all)
    assert str(os.getpid()) not in pids
    summary = write_summary(tmp_path / "summary.json", reports, seconds=seconds)
    assert (summary["ok"], summary["failed"]) == (4, 2)
    assert not (tmp_path / "bad.txt").exists()

    # resume: finished cases are skipped, the doomed one (now fixed) is redone from its leftovers
    (tmp_path / "doomed.attempted").unlink()
    reports, _ = run_batch(_jobs(tmp_path, {**kinds, "doomed": "ok", "bad": "ok"}), executor=dask_address)
    status = {r.case_id: r.status for r in reports}
    assert status == {"a": "skipped", "b": "skipped", "c": "skipped", "flaky": "skipped", "bad": "ok", "doomed": "ok"}
    assert (tmp_path / "doomed.txt").read_text().startswith("doomed")
    assert not (tmp_path / "doomed.part").exists()  # the dead attempt's leftovers were removed
    assert not list(tmp_path.glob(".*in_progress"))


def test_bad_executor_addresses_are_one_clear_line():
    assert parse_executor("local") is None
    assert parse_executor("dask://10.0.0.5:8786") == "tcp://10.0.0.5:8786"
    for bad in ("dask://nohost", "slurm://x:1", "dask://h:port"):
        with pytest.raises(InputError) as info:
            parse_executor(bad)
        assert "--executor" in info.value.one_line() and "Fix:" in info.value.one_line()


def test_unreachable_scheduler_fails_before_any_case(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(InputError, match="cannot reach the Dask scheduler"):
        run_batch(_jobs(tmp_path, {"a": "ok"}), executor=f"dask://127.0.0.1:{port}")
    assert not (tmp_path / "a.txt").exists()


@pytest.mark.slow
def test_preprocess_on_dask_isolates_a_bad_case_and_resumes_from_its_manifest(tmp_path, dask_address):
    """``medgen preprocess --executor dask://...``: the same engine, manifest and resume as locally."""
    import csv

    from medgen.data.phantoms import make_phantom
    from medgen.io.volume import Volume
    from medgen.io.writers import write_volume
    from medgen.pipelines.preprocess import run_preprocess

    inputs = tmp_path / "in"
    for i in range(2):
        p = make_phantom(30 + i, shape=(32, 28, 12))
        write_volume(Volume(p.ct, p.affine), inputs / f"c{i}.nii.gz")
    (inputs / "broken.nii.gz").write_text("not a volume")
    out = tmp_path / "out"
    first = run_preprocess([inputs], out, modality="ct", mlflow=False, executor=dask_address)
    assert sorted(first.done) == ["c0", "c1"] and list(first.failed) == ["broken"]
    assert "broken.nii.gz" in first.failed["broken"]
    with open(out / "manifest.csv", newline="") as fh:
        rows = {r["case_id"]: r for r in csv.DictReader(fh)}
    assert rows["c0"]["status"] == "ok" and rows["broken"]["status"] == "failed" and rows["broken"]["config_hash"]
    again = run_preprocess([inputs], out, modality="ct", mlflow=False, executor=dask_address)
    assert sorted(again.skipped) == ["c0", "c1"] and not again.done and list(again.failed) == ["broken"]
    changed = run_preprocess([inputs / "c0.nii.gz"], out, modality="ct", overrides=["crop.margin_mm=4"], mlflow=False,
                             executor=dask_address)
    assert changed.done == ["c0"]
    assert not list(out.glob(".*in_progress")) and not [p for p in out.iterdir() if ".tmp" in p.name]
