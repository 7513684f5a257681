"""Atomic, verified checkpoints.

A checkpoint is written to a temporary file and renamed, then listed in ``latest.json`` with its
SHA-256; only after the index names the new file are older checkpoints deleted, so a ``kill -9``
at any moment leaves at least one listed, complete checkpoint. On resume the newest checkpoint
whose hash matches and which loads with ``torch.load(weights_only=True)`` is used; a corrupt or
partial file (e.g. after ``kill -9`` or a full disk) is skipped with a warning, so a run never
resumes from garbage. Should the index itself be lost, the ``step_*.pt`` files are tried newest
first (verified by loading). Temporary files left by a killed writer are removed on the next save.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path

import torch

from medgen.errors import ModelError
from medgen.io.atomic import write_bytes_atomic, write_text_atomic

log = logging.getLogger(__name__)

INDEX = "latest.json"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(state: dict, folder: str | Path, step: int, keep: int = 2) -> Path:
    """Save ``state`` as ``folder/step_<step>.pt`` atomically and record it in the index."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob(".step_*.tmp*"):  # torn writes of a killed run (one writer: rank 0)
        leftover.unlink(missing_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    path = write_bytes_atomic(folder / f"step_{step:08d}.pt", data)
    index = _read_index(folder)
    index = [e for e in index if e["file"] != path.name] + [{"file": path.name, "step": step, "sha256": _sha256(data)}]
    index.sort(key=lambda e: e["step"])
    write_text_atomic(folder / INDEX, json.dumps(index[-keep:], indent=1))
    for stale in index[:-keep]:  # only once the index no longer lists them
        (folder / stale["file"]).unlink(missing_ok=True)
    return path


def _read_index(folder: Path) -> list[dict]:
    try:
        return json.loads((folder / INDEX).read_text())
    except (OSError, ValueError):
        return []


def latest_checkpoint_step(folder: str | Path) -> int:
    """The step of the newest checkpoint listed in ``folder``'s index (0 when there is none)."""
    return max((int(e["step"]) for e in _read_index(Path(folder))), default=0)


def load_checkpoint_file(path: str | Path, sha256: str | None = None, map_location="cpu") -> dict:
    """Load one checkpoint with ``weights_only=True``, verifying its hash when given."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot be read ({exc.strerror})", path=path, fix="check the path") from exc
    if sha256 is not None and _sha256(data) != sha256:
        raise ModelError("is corrupt (checksum mismatch)", path=path, fix="resume from an earlier checkpoint")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means unusable
        raise ModelError(f"cannot be loaded safely ({type(exc).__name__}: {str(exc)[:200]})", path=path,
                         fix="use a checkpoint written by medgen, or re-export the model") from exc


def load_latest_checkpoint(folder: str | Path, map_location="cpu") -> dict | None:
    """The newest valid checkpoint in ``folder``, or None if there is none."""
    folder = Path(folder)
    entries = _read_index(folder)
    if not entries and folder.is_dir():
        # no (readable) index: try the checkpoint files themselves, newest first, verified by loading
        entries = [{"file": p.name, "sha256": None} for p in sorted(folder.glob("step_*.pt"))]
        if entries:
            log.warning("%s: no readable %s; trying the checkpoint files themselves", folder, INDEX)
    for entry in reversed(entries):
        try:
            return load_checkpoint_file(folder / entry["file"], entry.get("sha256"), map_location)
        except ModelError as exc:
            log.warning("skipping checkpoint: %s", exc.one_line())
    return None
