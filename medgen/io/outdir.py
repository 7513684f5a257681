"""Claim an output folder: a batch's (checked, locked, cleaned, ownership-guarded) or a training run's.

Every batch command (``preprocess``, ``translate`` and ``segment-mr`` into a folder) writes through
:func:`claim_output_dir`, which, before any work:

* refuses a new output folder named like a file (``-o out/sct.txt``), and one that is, or lies
  inside, an input folder (a rerun would collect the
  outputs as inputs, and outputs would sit among the user's scans);
* takes an exclusive lock on the folder (``OUT_DIR/.medgen.lock``, the ``filelock`` package; the
  operating system releases it when the process dies, even after ``kill -9``). A second run into
  the same folder refuses at once with one line naming the holder, or waits up to
  ``MEDGEN_LOCK_TIMEOUT`` seconds when that is set, so two runs never interleave manifest rows;
* removes medgen's own temporary files left by an interrupted run (safe only under the lock);
* activates the folder's ownership guard (:mod:`medgen.io.ownership`) for the block, and checks
  that the run's folder-level files (manifest, summary) are medgen's to replace.

Every training command (``train segmenter``, ``train generator``, ``train translator``) holds its
run folder through :func:`claim_run_dir`: the same exclusive lock (two trainings into one run
folder would interleave checkpoints and metrics), and a run marker (``RUN/.medgen-run.json``)
written when medgen first trains there. A training writes ``checkpoints/``, ``metrics.jsonl``,
``bundle/`` and more into its run folder and replaces them as it goes, so it refuses, before any
work, a folder that holds anything and no marker: the user's files, or another command's outputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Iterable, Iterator

from medgen import __version__
from medgen.errors import OutputError
from medgen.io import ownership
from medgen.io.atomic import ensure_writable_dir, remove_stale_temps, write_text_atomic
from medgen.io.readers import VOLUME_SUFFIXES

LOCK_NAME = ".medgen.lock"
LOCK_INFO_NAME = ".medgen.lock.json"
#: Marker of a training run folder, written by the first training into it (:func:`claim_run_dir`).
RUN_MARKER = ".medgen-run.json"
#: The resume index a run folder of a medgen from before the marker holds (accepted as medgen's).
_PRE_MARKER_RUN = Path("checkpoints") / "latest.json"
#: Environment variable: seconds a run waits for another run's lock on its output folder (default 0).
LOCK_TIMEOUT_ENV = "MEDGEN_LOCK_TIMEOUT"


def check_outside_inputs(out_dir: str | Path, inputs: Iterable[str | Path]) -> None:
    """Refuse ``out_dir`` when it is an input folder or lies inside one.

    Raises:
        OutputError: naming the output folder and the input folder.
    """
    out = Path(out_dir).resolve()
    for item in inputs:
        folder = Path(item)
        if not folder.is_dir():
            continue
        folder = folder.resolve()
        if out == folder or folder in out.parents:
            where = "is the input folder" if out == folder else f"is inside the input folder {folder}"
            raise OutputError(f"{where}; outputs would mix with (and be read back as) inputs", path=out_dir,
                              fix="choose an output folder outside the input folders")


def check_folder_name(out_dir: str | Path) -> None:
    """Refuse a new output *folder* named like a file (``out/sct.txt``): the user meant a file.

    Raises:
        OutputError: the path does not exist yet and ends in a file extension (letters only).
    """
    path = Path(out_dir)
    if not path.exists() and re.fullmatch(r"\.[A-Za-z]{1,5}", path.suffix or ""):
        raise OutputError(f"ends in '{path.suffix}', a file extension, but a batch writes a folder here", path=path,
                          fix=f"give a volume file ({', '.join(VOLUME_SUFFIXES)}) for one scan, or a folder name "
                              "without an extension for many")


def _lock_timeout() -> float:
    raw = os.environ.get(LOCK_TIMEOUT_ENV, "0")
    try:
        value = float(raw)
    except ValueError:
        raise OutputError(f"is not a number of seconds ({raw!r})", path=LOCK_TIMEOUT_ENV,
                          fix=f"set {LOCK_TIMEOUT_ENV}=60 (or unset it)") from None
    return max(0.0, value)


def _holder(folder: Path) -> str:
    try:
        info = json.loads((folder / LOCK_INFO_NAME).read_text())
        return f" (pid {info['pid']} on {info['host']}, {info['command']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


@contextlib.contextmanager
def _exclusive(folder: Path, out_dir: str | Path, command: str) -> Iterator[None]:
    """Hold ``folder``'s medgen lock for the block (refuse at once, or wait ``MEDGEN_LOCK_TIMEOUT``)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(folder / LOCK_NAME))
    try:
        lock.acquire(timeout=_lock_timeout())
    except Timeout:
        raise OutputError(f"is in use by another medgen run{_holder(folder)}", path=out_dir,
                          fix=f"wait for that run to finish (or set {LOCK_TIMEOUT_ENV}=SECONDS to wait), "
                              "or choose another output folder") from None
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        (folder / LOCK_INFO_NAME).write_text(json.dumps(info))
        yield
    finally:
        (folder / LOCK_INFO_NAME).unlink(missing_ok=True)
        lock.release()


@contextlib.contextmanager
def claim_output_dir(out_dir: str | Path, *, inputs: Iterable[str | Path] = (), overwrite: bool = False,
                     command: str = "medgen", min_free_bytes: int = 0, outputs: Iterable[str] = ()) -> Iterator[Path]:
    """Check, lock, clean and guard ``out_dir`` for one batch run; yields the folder.

    Args:
        out_dir: the batch output folder (created).
        inputs: the run's input paths (folders among them must not hold ``out_dir``).
        overwrite: the user's ``--overwrite`` (files medgen did not write may be replaced).
        command: names this run in the message a concurrent run prints.
        min_free_bytes: free space required up front.
        outputs: names of the run's folder-level files (manifest, summary), checked replaceable up front.

    Raises:
        OutputError: unwritable, too little space, inside an input folder, or locked by another run.
    """
    check_folder_name(out_dir)
    check_outside_inputs(out_dir, inputs)
    folder = ensure_writable_dir(out_dir, min_free_bytes=min_free_bytes)
    with _exclusive(folder, out_dir, command):
        remove_stale_temps(folder)
        with ownership.guarded(folder, overwrite=overwrite) as guard:
            for name in outputs:  # before any work, not after hours of it
                guard.check_replaceable(folder / name)
            yield folder


@contextlib.contextmanager
def claim_run_dir(run_dir: str | Path, *, command: str = "medgen train") -> Iterator[Path]:
    """Lock a training run folder for one training and check that it is medgen's; yields the folder.

    The folder is medgen's when it is new or empty (the marker is then written), or carries the
    marker of an earlier medgen training (a resumed or extended run), or is a run folder of a medgen
    from before the marker (it holds ``checkpoints/latest.json``; the marker is added).

    Raises:
        OutputError: unwritable, locked by another run, or holding files no medgen training wrote.
    """
    existed = Path(run_dir).exists()
    folder = ensure_writable_dir(run_dir)
    marker = folder / RUN_MARKER
    if not marker.is_file():  # checked before the lock: a refused folder gets not even a lock file
        found = sorted(p.name for p in folder.iterdir() if p.name not in (LOCK_NAME, LOCK_INFO_NAME))
        if found and not (folder / _PRE_MARKER_RUN).is_file():
            shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
            raise OutputError(f"holds files no medgen training wrote ({shown}); a training writes and replaces "
                              "checkpoints/, metrics.jsonl and bundle/ in its run folder", path=run_dir,
                              fix="choose a new or empty run folder (a training resumes in its own run folder)")
    marked_here = False
    try:
        with _exclusive(folder, run_dir, command):
            if not marker.is_file():
                write_text_atomic(marker, json.dumps({"medgen_version": __version__, "command": command,
                                                      "created": time.strftime("%Y-%m-%d %H:%M:%S")}))
                marked_here = True
            yield folder
    except BaseException:
        # a training refused before it wrote anything (bad input, bad setting) leaves no run behind
        leftovers = {p.name for p in folder.iterdir()} - {RUN_MARKER, LOCK_NAME}
        if marked_here and not leftovers:
            marker.unlink(missing_ok=True)
            if not existed:
                (folder / LOCK_NAME).unlink(missing_ok=True)
                with contextlib.suppress(OSError):  # another run may have started in it meanwhile
                    folder.rmdir()
        raise
