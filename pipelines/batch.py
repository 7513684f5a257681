"""The one batch engine of the per-case commands (``preprocess``, ``translate``, ``segment-mr``, ``segment``).

A batch is a list of independent cases, each with its own output files. This module runs them
one at a time, in a process or thread pool or on Dask, and gives every command the same guarantees:

* failure isolation: a case that raises is recorded as ``failed`` (with a one-line message)
  and the batch goes on; a worker process that dies (killed, out of memory) fails only the
  cases it had not finished, and the summary is still written;
* resume: a case that is done is ``skipped`` (unless ``overwrite``). Done means, by default, that
  its done files all exist as the files medgen wrote; a command whose outputs depend on more than
  the input path overrides :meth:`BatchJob.is_done` (``preprocess``: the manifest row is ``ok`` with
  the same input content and config hash). A case whose in-progress marker is still there is
  never done, whatever its done check says;
* no partial outputs: a hidden ``.<case>.in_progress`` marker exists while a case writes, so a
  rerun after ``kill -9`` removes that case's leftovers and redoes it; a failed case removes
  what it wrote;
* ownership: only files medgen recorded writing into the folder are replaced or removed
  (:mod:`medgen.io.ownership`; the caller claims the folder with
  :func:`medgen.io.outdir.claim_output_dir`); a user's file of the same name fails its case;
* bounded memory: each worker holds one case at a time;
* a summary JSON in the output folder (counts, seconds, one entry per case), or the caller's own
  record of each case as it finishes (``on_report``: ``preprocess`` journals its manifest row).

The work function must be a module-level function (picklable for the process pool and Dask) with the
signature ``fn(input_path, files, payload, case_id=...) -> CaseReport``.
"""

from __future__ import annotations

import glob
import json
import logging
import shutil
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from medgen.errors import MedgenError
from medgen.io import ownership
from medgen.io.atomic import write_text_atomic
from medgen.pipelines.executor import THREADS, WORKER_DIED, parse_executor, run_tasks
from medgen.progress import progress

log = logging.getLogger(__name__)

__all__ = ["CaseReport", "BatchJob", "run_batch", "run_job", "write_summary"]


@dataclass
class CaseReport:
    """What happened to one case of a batch (``status``: ``ok`` | ``skipped`` | ``failed``)."""

    case_id: str
    input: str
    status: str
    outputs: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    labels_found: list = field(default_factory=list)
    error: str | None = None
    agreement: dict | None = None  # segment-mr --agreement: medgen.inference.agreement's report


@dataclass
class BatchJob:
    """One case of a batch.

    Subclass it (at module level, so it pickles) to change what "done" means: :meth:`is_done` is
    called in the calling process, before any case is sent to a worker.

    Attributes:
        case_id: names the outputs and the in-progress marker.
        input: the case's input path.
        files: every output file the case may write (removed on failure or after an interruption).
        done: the files whose presence means the case finished (written last by ``fn``).
        fn: module-level work function, ``fn(input, files, payload, case_id=...) -> CaseReport``.
        payload: anything picklable ``fn`` needs (outputs, options).
        outputs_when_done: the ``outputs`` of the report when the case is skipped as done.
    """

    case_id: str
    input: str
    files: list[Path]
    done: list[Path]
    fn: Callable[..., CaseReport]
    payload: Any = None
    outputs_when_done: dict = field(default_factory=dict)
    overwrite: bool = False  #: the user's --overwrite: files medgen did not write may be replaced

    @property
    def marker(self) -> Path:
        return self.done[0].with_name(f".{self.case_id}.in_progress")

    def is_done(self) -> bool:
        """The case needs no work: every done file is present and still the bytes medgen wrote."""
        return all(ownership.owns_here(p) for p in self.done)


def _remove_leftovers(job: BatchJob) -> None:
    for leftover in job.files:
        ownership.remove_own_output(leftover)
        _remove_torn_writes(leftover)


def _remove_torn_writes(path: Path) -> None:
    """The temporary files of ``path`` (``atomic_path``'s ``.<name>.<8 chars>.tmp<suffix>``) left by
    an atomic write that was interrupted (its process killed before the rename)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp*"):
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def run_job(job: BatchJob) -> CaseReport:
    """Run one case under its folder's ownership guard; never raises for a bad case (see :func:`_run_job`)."""
    with ownership.guarded(job.marker.parent, overwrite=job.overwrite):
        return _run_job(job)


def _run_job(job: BatchJob) -> CaseReport:
    """Run one case; never raises for a bad case (the report says ``failed``).

    The marker exists exactly while the case's outputs are being written, written and removed
    like any medgen output (through the folder's ownership ledger, so a user's file of the same
    name is never taken for it or deleted). A rerun that finds medgen's marker knows the outputs
    present are the partial work of an interrupted run (not someone else's files) and removes
    them before starting again; a case that fails removes what it wrote.
    """
    if ownership.owns(job.marker):
        log.info("%s: an earlier run was interrupted on this case; redoing it", job.case_id)
        _remove_leftovers(job)
    _remove_torn_writes(job.marker)  # a run killed while it wrote the marker itself
    before = {p for p in job.files if p.exists()}
    try:  # medgen's own file (in the ledger): a user's file of that name is refused, never removed
        write_text_atomic(job.marker, f"medgen is writing case {job.case_id} here\n")
    except MedgenError as exc:
        log.error("%s: %s", job.case_id, exc.one_line())
        return _failed(job, exc.one_line())
    ok = False
    start = time.perf_counter()
    try:
        report = job.fn(Path(job.input), job.files, job.payload, case_id=job.case_id)
        ok = True
        return report
    except MedgenError as exc:
        log.error("%s: %s", job.case_id, exc.one_line())
        return _failed(job, exc.one_line(), start)
    except Exception as exc:  # noqa: BLE001 - one bad case must not stop the batch
        log.error("%s: unexpected %s: %s", job.case_id, type(exc).__name__, exc)
        log.debug("%s", traceback.format_exc())
        return _failed(job, f"{job.input}: {type(exc).__name__}: {exc}", start)  # PATH: what is wrong
    finally:
        if not ok:  # failed: no partial outputs that could look complete
            for partial in set(job.files) - before:
                ownership.remove_own_output(partial)
        ownership.remove_own_output(job.marker)


def _failed(job: BatchJob, error: str, start: float | None = None) -> CaseReport:
    timings = {} if start is None else {"total": round(time.perf_counter() - start, 3)}
    return CaseReport(job.case_id, job.input, "failed", timings=timings, error=error)


def _lost(job: BatchJob, error: str) -> CaseReport:
    """The report of a case whose worker died (or whose task the cluster gave up on)."""
    return _failed(job, f"{job.input}: {error}. Fix: rerun the same command (finished cases are kept); if it "
                        "recurs use fewer --workers (memory), and when calling medgen from a Python script, "
                        "guard it with if __name__ == '__main__'")


def _run_pool(todo: list[BatchJob], workers: int, desc: str, executor: str | None,
              on_report: Callable[[BatchJob, CaseReport], None]) -> list[CaseReport]:
    """Run ``todo`` in a local pool or on a Dask cluster (:mod:`medgen.pipelines.executor`);
    a dead worker fails only its unfinished cases."""
    reports: dict[int, CaseReport] = {}
    bar = progress(total=len(todo), desc=desc, unit="case")
    try:
        preload = sorted({job.fn.__module__ for job in todo})  # the commands' work modules
        for i, report, error in run_tasks(run_job, todo, workers=workers, executor=executor, preload=preload):
            job = todo[i]
            # a case that died with its worker keeps its marker: a rerun removes its leftovers and redoes it
            reports[i] = report if error is None else _lost(job, error)
            on_report(job, reports[i])
            bar.update(1)
    finally:
        bar.close()
    for i, job in enumerate(todo):  # defensive: every case gets a report
        if i not in reports:
            reports[i] = _lost(job, WORKER_DIED)
            on_report(job, reports[i])
    return [reports[i] for i in range(len(todo))]


def _ignore(job: BatchJob, report: CaseReport) -> None:
    pass


def run_batch(jobs: list[BatchJob], *, workers: int = 1, overwrite: bool = False, redo_done: bool | None = None,
              desc: str = "batch", executor: str | None = "local",
              on_report: Callable[[BatchJob, CaseReport], None] | None = None) -> tuple[list[CaseReport], float]:
    """Run the cases not already done; returns all reports (skipped ones first) and the seconds spent.

    Args:
        jobs: the cases.
        workers: local worker processes or threads (1: in this process, one case after another).
        overwrite: the user's ``--overwrite`` (files medgen did not write may be replaced).
        redo_done: also run the cases that are done; by default ``overwrite`` (``preprocess`` passes
            False: its done check already proves the outputs are medgen's, for this input and config).
        desc: the progress bar's label.
        executor: ``local`` (this process, or a pool of ``workers`` processes), ``threads``
            (``workers`` threads of this process) or ``dask://HOST:PORT`` (one Dask task per case;
            see :mod:`medgen.pipelines.executor`).
        on_report: called in this process with each case and its report as soon as the case is
            skipped or finished (e.g. to journal it), before the batch ends.
    """
    on_report = on_report or _ignore
    redo_done = overwrite if redo_done is None else redo_done
    todo, reports = [], []
    for job in jobs:
        job.overwrite = overwrite
        # medgen's marker still there: the run was killed between the case's last write and the
        # marker's removal (e.g. its pool torn down by another worker's death): redo it, not skip it
        if not redo_done and not ownership.owns_here(job.marker) and job.is_done():
            reports.append(CaseReport(job.case_id, job.input, "skipped", dict(job.outputs_when_done)))
            on_report(job, reports[-1])
        else:
            todo.append(job)
    log.info("%d cases: %d to do, %d already done", len(jobs), len(todo), len(reports))
    start = time.perf_counter()
    if parse_executor(executor) in (None, THREADS) and (workers <= 1 or len(todo) <= 1):
        for job in progress(todo, desc=desc, unit="case"):
            reports.append(run_job(job))
            on_report(job, reports[-1])
    else:
        reports += _run_pool(todo, workers, desc, executor, on_report)
    return reports, time.perf_counter() - start


def write_summary(path: Path, reports: list[CaseReport], *, seconds: float, **extra) -> dict:
    """Write the batch summary JSON atomically (counts, seconds, ``extra``, one entry per case)."""
    summary = {"n_scans": len(reports), "ok": sum(r.status == "ok" for r in reports),
               "skipped": sum(r.status == "skipped" for r in reports),
               "failed": sum(r.status == "failed" for r in reports), "seconds": round(seconds, 2),
               **extra, "cases": [asdict(r) for r in reports]}
    write_text_atomic(path, json.dumps(summary, indent=1, default=str))
    log.info("batch: %d ok, %d skipped, %d failed (summary in %s)", summary["ok"], summary["skipped"],
             summary["failed"], path)
    return summary
