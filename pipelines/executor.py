"""Where the cases of a batch run: this process, a local process pool, or a Dask cluster.

Every per-case command (``preprocess``, ``translate``, ``segment-mr``, ``segment``) hands its
cases to :func:`run_tasks`, chosen by ``--executor``:

* ``local`` (default): ``--workers 1`` runs the cases in this process; ``--workers N`` in a pool
  of N processes started from a *forkserver* that imported torch, MONAI, SimpleITK and medgen
  once (``spawn`` made every worker import them again: seconds of start-up per worker, which
  made 2 workers slower than 1 on small batches). Each worker gets ``cores // N`` torch threads,
  so N workers do not oversubscribe the cores.
* ``threads``: ``--workers N`` runs the cases in N threads of this process: no worker start-up
  and no pickling, and the heavy parts of a case (gzip, SimpleITK / numpy resampling, torch
  networks) release the GIL, so threads run them side by side. Torch and SimpleITK get
  ``cores // N`` threads each while the batch runs. A case that crashes the interpreter (out of
  memory) takes the whole command with it; rerunning it resumes.
* ``dask://HOST:PORT``: each case is one task on a running ``dask.distributed`` scheduler
  (``dask-scheduler``, ``dask-jobqueue`` on Slurm, the Dask Kubernetes operator...). The workers
  must see the same file system paths and have medgen installed. A task whose worker dies is
  retried by Dask on another worker (``distributed.scheduler.allowed-failures``, default 3);
  past that the case is reported ``failed`` and the rest of the batch goes on.

The work function must be module-level (picklable) and should not raise for a bad case (the
batch engines return a ``failed`` report instead); what :func:`run_tasks` reports as an error is
the infrastructure failing: a worker process that died, a task Dask gave up on.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from medgen.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["parse_executor", "prestart", "run_tasks", "THREADS", "WORKER_DIED"]

#: what the forkserver imports once for every command (plus the command's own work module), so pool
#: workers start without importing them again. Only what the workers need: the command's first
#: fork waits until the forkserver has imported all of it.
PRELOAD = ("torch", "monai.transforms", "SimpleITK", "nibabel")

WORKER_DIED = ("a worker process died (killed or out of memory) before this case finished; "
               "rerun the same command to redo it")


#: :func:`parse_executor`'s value for ``--executor threads``.
THREADS = "threads"


def parse_executor(spec: str | None) -> str | None:
    """``None`` for the local process pool, :data:`THREADS` for ``threads``, else the Dask scheduler
    address ``tcp://HOST:PORT``.

    Raises:
        InputError: not ``local``, ``threads`` or ``dask://HOST:PORT``.
    """
    if spec is None or spec == "local":
        return None
    if spec == THREADS:
        return THREADS
    if spec.startswith("dask://"):
        address = spec[len("dask://"):]
        host, _, port = address.rpartition(":")
        if host and port.isdigit():
            return f"tcp://{address}"
    raise InputError(f"'{spec}' is not an executor", path="--executor",
                     fix="pass --executor local (default), threads, or dask://HOST:PORT (a dask.distributed scheduler)")


def prestart(workers: int, executor: str | None = "local", preload: Sequence[str] = ()) -> None:
    """Start the local pool's forkserver now, so it imports torch/MONAI/``preload`` while this
    process does the same (call first thing in a command): the imports of the two run side by side
    on two cores instead of one after the other. A no-op for one worker or a Dask executor."""
    if workers <= 1 or parse_executor(executor) is not None:
        return
    context = _context(preload)
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver
        forkserver.ensure_running()


def run_tasks(fn: Callable[[Any], Any], items: Sequence, *, workers: int = 1, executor: str | None = "local",
              preload: Sequence[str] = ()) -> Iterator[tuple[int, Any, str | None]]:
    """Run ``fn(item)`` for every item; yield ``(index, result, None)`` or ``(index, None, error)`` as they finish.

    Args:
        fn: module-level function (pickled by reference to the workers).
        items: picklable arguments, one per case.
        workers: local worker processes or threads (ignored for Dask: the cluster has its own).
        executor: ``local`` / None, ``threads`` or ``dask://HOST:PORT``.
        preload: modules the local pool's workers need (imported once in the forkserver; ``fn``'s
            own module always is); ignored when :func:`prestart` already started it.
    """
    address = parse_executor(executor)
    if address not in (None, THREADS):
        yield from _run_dask(fn, items, address)
    elif workers <= 1 or len(items) <= 1:
        for i, item in enumerate(items):
            yield i, fn(item), None
    elif address == THREADS:
        yield from _run_threads(fn, items, min(int(workers), len(items)))
    else:
        yield from _run_pool(fn, items, min(int(workers), len(items)), (*preload, fn.__module__))


# ---------------------------------------------------------------------------------------------
# local pool
# ---------------------------------------------------------------------------------------------

def _worker_init(threads: int, level: int) -> None:
    """Pool worker set-up: its share of the cores for torch and the parent's log level."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("medgen").setLevel(level)
    import torch
    torch.set_num_threads(threads)


def _context(preload: Sequence[str] = ()):
    """A forkserver context with the heavy imports preloaded (spawn where there is no forkserver).

    The preload list counts only when the forkserver starts (its first use in this process)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(dict.fromkeys((*PRELOAD, *preload))))
    return context


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _run_pool(fn, items, workers: int, preload: Sequence[str]) -> Iterator[tuple[int, Any, str | None]]:
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    level = logging.getLogger("medgen").getEffectiveLevel()
    threads = max(1, _cores() // workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_context(preload), initializer=_worker_init,
                               initargs=(threads, level))
    try:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        for future in as_completed(futures):
            i = futures[future]
            try:
                yield i, future.result(), None
            except BrokenProcessPool:  # this and every unfinished case: the pool is gone
                log.error("case %d: %s", i, WORKER_DIED)
                yield i, None, WORKER_DIED
            except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot be unpickled
                yield i, None, f"{type(exc).__name__}: {exc}"
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _sitk_threads(threads: int) -> Iterator[None]:
    """SimpleITK (one process-wide setting) uses ``threads`` threads per filter inside the block."""
    import SimpleITK as sitk

    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def _run_threads(fn, items, workers: int) -> Iterator[tuple[int, Any, str | None]]:
    """N batch threads that together use the cores once: ``cores // N`` threads each for SimpleITK
    and for torch (whose OpenMP thread count is per thread, so each batch thread sets its own)."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    import torch

    threads = max(1, _cores() // workers)
    with _sitk_threads(threads), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medgen-case",
                                                    initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        try:
            for future in as_completed(futures):
                try:
                    yield futures[future], future.result(), None
                except Exception as exc:  # noqa: BLE001 - fn should not raise; report, go on
                    yield futures[future], None, f"{type(exc).__name__}: {exc}"
        finally:  # interrupted: start no further case; the running ones finish (their markers go)
            for future in futures:
                future.cancel()


# ---------------------------------------------------------------------------------------------
# Dask
# ---------------------------------------------------------------------------------------------

def _client(address: str):
    try:
        from distributed import Client
    except ImportError as exc:
        raise InputError("dask.distributed is not installed", path="--executor",
                         fix="pip install 'dask[distributed]' (on this machine and the workers)") from exc
    try:
        return Client(address, timeout="15s", set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise InputError(f"cannot reach the Dask scheduler at {address} ({type(exc).__name__})", path="--executor",
                         fix="start it (dask scheduler / dask-jobqueue) and pass its address as dask://HOST:PORT") from exc


def _run_dask(fn, items, address: str) -> Iterator[tuple[int, Any, str | None]]:
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    client = _client(address)
    batch = uuid.uuid4().hex[:8]
    try:
        futures = client.map(fn, list(items), key=[f"medgen-{batch}-{i}" for i in range(len(items))], pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        log.info("%d cases sent to the Dask scheduler at %s", len(futures), address)
        for future in as_completed(futures, loop=client.loop):
            i = index[future.key]
            try:
                yield i, future.result(), None
            except KilledWorker:
                log.error("case %d: %s", i, WORKER_DIED)
                yield i, None, "Dask workers died running this case (retried up to the scheduler's allowed-failures); " \
                               "rerun the same command to redo it"
            except Exception as exc:  # noqa: BLE001 - the task itself failed (fn should not raise)
                yield i, None, f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
