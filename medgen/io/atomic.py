"""Atomic file output: write to a temporary sibling, then rename.

A reader (or a resumed run) therefore sees either the complete previous file, the complete new
file, or nothing: never a half-written output that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from medgen.errors import OutputError


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
    if path.exists() and not overwrite:
        raise OutputError("already exists", path=path, fix="choose another path or pass --overwrite")
    return path


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
        os.replace(tmp, path)
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
