"""Which files in an output folder medgen wrote: a ledger of name + size + SHA-256, per folder.

medgen replaces or removes a file in a batch output folder only when that file is one medgen
recorded writing there; a user's file that merely has the same name is refused with one line
naming it (``--overwrite`` is the user's explicit permission to replace it).

The ledger is ``OUT_DIR/.medgen-outputs.jsonl``: one JSON line per file medgen wrote (name,
size, modification time, SHA-256), appended with a single ``O_APPEND`` write and fsynced, so
worker processes of one run can record concurrently and a ``kill -9`` leaves at most one torn
last line (ignored). A file is *owned* when its current size and content match any entry
recorded under its name; size + modification time equal to an entry skip re-hashing. The entry is
written before the temporary file is renamed into place (see :func:`medgen.io.atomic.atomic_path`),
so an interruption between the two never leaves a medgen file that medgen does not recognise.

A :class:`Guard` is active for a folder in a thread while a batch case writes into it
(:func:`guarded`); outside one, writers behave as before (refuse existing files without
``overwrite``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Iterator

from medgen.errors import OutputError

log = logging.getLogger(__name__)

LEDGER_NAME = ".medgen-outputs.jsonl"
_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """SHA-256 of one file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Guard:
    """The ownership ledger of one output folder, read incrementally (appends by other processes too).

    Args:
        folder: the output folder.
        overwrite: the user passed ``--overwrite``: files medgen does not own may be replaced.
    """

    def __init__(self, folder: str | Path, *, overwrite: bool = False):
        self.folder = Path(folder).resolve()
        self.path = self.folder / LEDGER_NAME
        self.overwrite = overwrite
        self._entries: dict[str, list[dict]] = {}
        self._offset = 0

    def _refresh(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # a torn last line is read again once complete (or never)
        for line in data[:end].splitlines():
            try:
                entry = json.loads(line)
                self._entries.setdefault(str(entry["name"]), []).append(entry)
            except (ValueError, KeyError, TypeError):
                continue
        self._offset += end

    def covers(self, path: str | Path) -> bool:
        """True when ``path`` lies directly in this guard's folder."""
        return Path(path).resolve().parent == self.folder

    def owns(self, path: str | Path) -> bool:
        """True when ``path`` exists and its bytes are ones medgen recorded writing under its name."""
        path = Path(path)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return False
        if not path.is_file():
            return False
        self._refresh()
        entries = [e for e in self._entries.get(path.name, []) if e.get("size") == stat.st_size]
        if not entries:
            return False
        if any(e.get("mtime_ns") == stat.st_mtime_ns for e in entries):
            return True
        digest = file_digest(path)
        return any(e.get("sha256") == digest for e in entries)

    def record(self, written: str | Path, name: str) -> None:
        """Record that medgen wrote ``written`` (a complete file) to be renamed to ``name`` here."""
        stat = Path(written).stat()
        entry = {"name": name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_digest(Path(written))}
        line = (json.dumps(entry) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line)  # one write: lines of concurrent workers never interleave
            os.fsync(fd)
        finally:
            os.close(fd)

    def check_replaceable(self, path: str | Path) -> None:
        """Raise :class:`OutputError` when ``path`` exists and is neither medgen's nor allowed by ``--overwrite``."""
        path = Path(path)
        if (path.exists() or path.is_symlink()) and not self.overwrite and not self.owns(path):
            raise OutputError("already exists and was not written by medgen into this folder; medgen never "
                              "replaces a file it did not write", path=path,
                              fix="move the file away, choose another output folder, or pass --overwrite to replace it")

    def remove_if_owned(self, path: str | Path) -> bool:
        """Delete ``path`` only if medgen wrote it; a foreign file is kept (and logged). True if removed."""
        path = Path(path)
        if not (path.exists() or path.is_symlink()):
            return False
        if not self.owns(path):
            log.warning("%s: kept: it was not written by medgen", path)
            return False
        path.unlink(missing_ok=True)
        return True


#: the active guards of each thread (a thread-pool batch runs one case per thread: each case's
#: guard is its own, and one case ending does not deactivate another's)
_THREAD = threading.local()


def _active() -> dict[Path, Guard]:
    if not hasattr(_THREAD, "guards"):
        _THREAD.guards = {}
    return _THREAD.guards


def active_guard(path: str | Path) -> Guard | None:
    """The guard of the folder holding ``path``, if a batch in this thread is writing there."""
    return _active().get(Path(path).resolve().parent)


@contextlib.contextmanager
def guarded(folder: str | Path, *, overwrite: bool = False) -> Iterator[Guard]:
    """Activate the ownership guard of ``folder`` in this thread for the block (re-entrant)."""
    active = _active()
    key = Path(folder).resolve()
    outer = active.get(key)
    guard = Guard(key, overwrite=overwrite) if outer is None or outer.overwrite != overwrite else outer
    active[key] = guard
    try:
        yield guard
    finally:
        if outer is None:
            active.pop(key, None)
        else:
            active[key] = outer


def owns(path: str | Path) -> bool:
    """True when an active guard covers ``path`` and medgen wrote it (False without a guard)."""
    guard = active_guard(path)
    return guard is not None and guard.owns(path)


def owns_here(path: str | Path) -> bool:
    """Like :func:`owns`, reading the folder's ledger even when no guard is active in this process."""
    guard = active_guard(path) or Guard(Path(path).resolve().parent)
    return guard.owns(path)


def remove_own_output(path: str | Path) -> bool:
    """Remove ``path`` if medgen wrote it: through the active guard, else only if it does not exist."""
    guard = active_guard(path)
    if guard is None:
        return False
    return guard.remove_if_owned(path)
