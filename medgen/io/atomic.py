"""Atomic file output: write to a temporary sibling, then rename.

A reader (or a resumed run) therefore sees either the complete previous file, the complete new
file, or nothing: never a half-written output that looks complete. The temporary sibling is named
``.<name>.<8 random chars>.tmp<suffix>`` (:data:`TEMP_NAME`); a ``kill -9`` can leave one behind,
and :func:`remove_stale_temps` deletes exactly those on the next batch run into the folder. The
final file gets the usual ``0666 & ~umask`` mode (not the temporary file's private 0600). In a
folder guarded by :mod:`medgen.io.ownership`, a file is replaced only if medgen wrote it (or the
user passed ``--overwrite``), and every file written is recorded in the folder's ledger.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from medgen.errors import OutputError
from medgen.io import ownership

log = logging.getLogger(__name__)

#: Names of medgen's own temporary files: ``atomic_path``'s ``.<name>.<mkstemp 8>.tmp<suffix>``, the
#: detached writer's ``.<name>.<mkdtemp 8>.tmp`` folders and ``ensure_writable_dir``'s probe.
TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9._-]+)?$|^\.medgen-write-test-[a-z0-9_]{8}$")


def check_output_path(path: str | Path, *, overwrite: bool = False, inputs: tuple = ()) -> Path:
    """Refuse outputs that exist (without ``overwrite``) or that are one of the inputs.

    Raises:
        OutputError: naming the path and the fix.
    """
    path = Path(path)
    resolved = path.resolve()
    for item in inputs:
        if item is not None and Path(item).resolve() == resolved:
            raise OutputError("is an input; medgen never overwrites its inputs", path=path,
                              fix="choose another output path")
    guard = ownership.active_guard(path)
    if guard is not None:  # a batch folder: medgen's own outputs may be replaced, nothing else
        if not overwrite:
            guard.check_replaceable(path)
    elif path.exists() and not overwrite:
        raise OutputError("already exists", path=path, fix="choose another path or pass --overwrite")
    return path


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (thread-safe)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish(tmp: Path, path: Path) -> None:
    """Rename the complete ``tmp`` onto ``path``: umask mode, ownership check and ledger entry first."""
    os.chmod(tmp, 0o666 & ~_umask())
    guard = ownership.active_guard(path)
    if guard is not None:
        guard.check_replaceable(path)
        guard.record(tmp, path.name)
    os.replace(tmp, path)


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete medgen's own temporary files left in ``folder`` by an interrupted run (see :data:`TEMP_NAME`).

    Call it only while holding the folder's lock (:func:`medgen.io.outdir.claim_output_dir`): a
    running writer's temporary file looks the same.
    """
    removed = []
    for item in Path(folder).iterdir():
        if TEMP_NAME.match(item.name) and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink(missing_ok=True)
            removed.append(item)
    if removed:
        log.info("%s: removed %d temporary file(s) left by an interrupted run", folder, len(removed))
    return removed


def ensure_writable_dir(folder: str | Path, *, min_free_bytes: int = 0) -> Path:
    """Create ``folder`` if needed and check up front that it is writable with enough space."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".medgen-write-test-"):
            pass
    except OSError as exc:
        raise OutputError(f"is not writable ({exc.strerror or exc})", path=folder,
                          fix="choose a folder you can write to") from exc
    if min_free_bytes:
        free = shutil.disk_usage(folder).free
        if free < min_free_bytes:
            raise OutputError(f"has {free / 2**20:.0f} MiB free, about {min_free_bytes / 2**20:.0f} MiB is needed",
                              path=folder, fix="free disk space or choose another output folder")
    return folder


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); on success rename it to ``path``.

    On any exception the temporary file is removed and ``path`` is untouched.

    Examples:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> with atomic_path(d / "a.txt") as tmp:
        ...     _ = tmp.write_text("hello")
        >>> (d / "a.txt").read_text()
        'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the real suffix, so writers that pick the format from it work (also for names like "....nii.gz")
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        publish(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"could not be written ({exc.strerror or exc})", path=path,
                          fix="check free disk space and permissions") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a text file atomically (manifests, JSON reports, label-name files)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write a binary file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
