"""The shared batch runner: a crashed worker process fails its case, the rest still report; the
thread executor runs cases side by side."""

import os
import threading
from pathlib import Path

import torch

from medgen.io.atomic import write_text_atomic
from medgen.pipelines.batch import BatchJob, CaseReport, run_batch, write_summary


def _work(path: Path, files, payload, *, case_id: str) -> CaseReport:
    if payload == "crash":
        os._exit(3)  # a worker killed outright (like the OOM killer): no exception, no report
    if payload == "raise":
        raise ValueError(f"cannot read {path.name}")
    write_text_atomic(files[0], case_id)  # medgen's writer: the file is recorded as medgen's own
    return CaseReport(case_id, str(path), "ok", {"out": str(files[0])})


def _jobs(tmp_path, kinds):
    jobs = []
    for name, kind in kinds.items():
        out = tmp_path / f"{name}.txt"
        jobs.append(BatchJob(name, str(tmp_path / f"{name}.in"), files=[out], done=[out], fn=_work, payload=kind))
    return jobs


def test_sequential_batch_isolates_failures_and_skips_done_cases(tmp_path):
    reports, _ = run_batch(_jobs(tmp_path, {"a": "ok", "b": "raise"}), workers=1)
    assert {r.case_id: r.status for r in reports} == {"a": "ok", "b": "failed"}
    assert "b.in" in next(r for r in reports if r.case_id == "b").error
    reports, _ = run_batch(_jobs(tmp_path, {"a": "ok", "b": "ok"}), workers=1)
    assert {r.case_id: r.status for r in reports} == {"a": "skipped", "b": "ok"}
    summary = write_summary(tmp_path / "s.json", reports, seconds=1.0, tool="x")
    assert (summary["ok"], summary["skipped"], summary["failed"], summary["tool"]) == (1, 1, 0, "x")


def test_a_crashed_worker_fails_its_case_and_the_batch_still_reports(tmp_path):
    jobs = _jobs(tmp_path, {"crash": "crash", "b": "ok", "c": "ok"})
    reports, _ = run_batch(jobs, workers=2)
    status = {r.case_id: r.status for r in reports}
    assert set(status) == {"crash", "b", "c"}  # every case has a report, none was lost
    assert status["crash"] == "failed"
    crashed = next(r for r in reports if r.case_id == "crash")
    assert "rerun" in crashed.error
    assert not (tmp_path / "crash.txt").exists()
    # cases the dead pool did not finish are failed (rerun redoes them), finished ones kept
    for name in ("b", "c"):
        assert status[name] == "ok" or (status[name] == "failed" and "rerun" in next(
            r for r in reports if r.case_id == name).error)
    # the rerun (crash fixed) skips what finished and redoes the rest, cleaning the stale marker
    reports, _ = run_batch(_jobs(tmp_path, {"crash": "ok", "b": "ok", "c": "ok"}), workers=1)
    assert all(r.status in ("ok", "skipped") for r in reports)
    assert {r.case_id for r in reports if r.status == "ok"} >= {"crash"}
    assert not list(tmp_path.glob(".*in_progress"))


_BOTH_RUNNING = threading.Barrier(2)


def _work_side_by_side(path: Path, files, payload, *, case_id: str) -> CaseReport:
    """Waits (at most 20 s) until the other case runs too: passes only when two cases run at once."""
    if payload == "wait":
        _BOTH_RUNNING.wait(timeout=20)
    if payload == "raise":
        raise ValueError(f"cannot read {path.name}")
    write_text_atomic(files[0], case_id)
    return CaseReport(case_id, str(path), "ok", {"threads": torch.get_num_threads()})


def test_thread_executor_runs_cases_side_by_side_each_under_its_own_ownership_guard(tmp_path):
    torch_threads = torch.get_num_threads()
    (tmp_path / "user.txt").write_text("a file the user wrote")
    kinds = {"a": "wait", "b": "wait", "bad": "raise", "user": "ok", "c": "ok"}
    jobs = [BatchJob(n, str(tmp_path / f"{n}.in"), files=[tmp_path / f"{n}.txt"], done=[tmp_path / f"{n}.txt"],
                     fn=_work_side_by_side, payload=k) for n, k in kinds.items()]
    reports, _ = run_batch(jobs, workers=2, executor="threads")
    status = {r.case_id: r.status for r in reports}
    assert status == {"a": "ok", "b": "ok", "bad": "failed", "user": "failed", "c": "ok"}
    assert "bad.in" in next(r for r in reports if r.case_id == "bad").error
    assert (tmp_path / "user.txt").read_text() == "a file the user wrote"  # refused, not replaced
    assert "not written by medgen" in next(r for r in reports if r.case_id == "user").error
    cores = len(os.sched_getaffinity(0))
    assert {r.outputs["threads"] for r in reports if r.status == "ok"} == {max(1, cores // 2)}
    assert torch.get_num_threads() == torch_threads  # the share is given back after the batch
    assert not list(tmp_path.glob(".*in_progress"))
    # every thread's outputs went into the one ledger: a rerun skips them all
    again, _ = run_batch([BatchJob(n, str(tmp_path / f"{n}.in"), files=[tmp_path / f"{n}.txt"],
                                   done=[tmp_path / f"{n}.txt"], fn=_work_side_by_side, payload="ok")
                          for n in ("a", "b", "c")], workers=2, executor="threads")
    assert {r.status for r in again} == {"skipped"}


def test_a_users_file_named_like_the_in_progress_marker_is_kept_and_fails_only_its_case(tmp_path):
    marker = tmp_path / ".a.in_progress"
    marker.write_text("the user's notes")
    reports, _ = run_batch(_jobs(tmp_path, {"a": "ok", "b": "ok"}), workers=1)
    status = {r.case_id: r for r in reports}
    assert status["b"].status == "ok" and status["a"].status == "failed"
    assert str(marker) in status["a"].error and "not written by medgen" in status["a"].error
    assert marker.read_text() == "the user's notes"  # neither taken for an interrupted run nor deleted
    assert not (tmp_path / "a.txt").exists()


def test_a_run_killed_while_writing_the_marker_leaves_nothing_behind_after_the_rerun(tmp_path):
    torn = tmp_path / "..a.in_progress.k3j9x0ab.tmp.in_progress"  # atomic_path's temp of the marker .a.in_progress
    torn.write_text("")
    reports, _ = run_batch(_jobs(tmp_path, {"a": "ok"}), workers=1)
    assert [r.status for r in reports] == ["ok"]
    assert not torn.exists() and not list(tmp_path.glob(".*in_progress*"))
    assert (tmp_path / "a.txt").read_text() == "a"


def test_a_case_killed_after_its_last_write_but_before_its_marker_went_is_redone_not_skipped(tmp_path):
    from medgen.io import ownership
    with ownership.guarded(tmp_path):  # the state a pool torn down mid-case leaves: outputs and marker
        write_text_atomic(tmp_path / "a.txt", "partial")
        write_text_atomic(tmp_path / ".a.in_progress", "medgen is writing case a here\n")
    reports, _ = run_batch(_jobs(tmp_path, {"a": "ok"}), workers=1)
    assert [r.status for r in reports] == ["ok"]
    assert (tmp_path / "a.txt").read_text() == "a"
    assert not list(tmp_path.glob(".*in_progress*"))
