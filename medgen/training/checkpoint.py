"""Atomic, verified checkpoints.

A checkpoint is written to a temporary file and renamed, then listed in ``latest.json`` with its
SHA-256. On resume the newest checkpoint whose hash matches and which loads with
``torch.load(weights_only=True)`` is used; a corrupt or partial file (e.g. after ``kill -9`` or a
full disk) is skipped with a warning, so a run never resumes from garbage.
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
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    path = write_bytes_atomic(folder / f"step_{step:08d}.pt", data)
    index = _read_index(folder)
    index = [e for e in index if e["file"] != path.name] + [{"file": path.name, "step": step, "sha256": _sha256(data)}]
    index.sort(key=lambda e: e["step"])
    for stale in index[:-keep]:
        (folder / stale["file"]).unlink(missing_ok=True)
    write_text_atomic(folder / INDEX, json.dumps(index[-keep:], indent=1))
    return path


def _read_index(folder: Path) -> list[dict]:
    try:
        return json.loads((folder / INDEX).read_text())
    except (OSError, ValueError):
        return []


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
    for entry in reversed(_read_index(folder)):
        try:
            return load_checkpoint_file(folder / entry["file"], entry["sha256"], map_location)
        except ModelError as exc:
            log.warning("skipping checkpoint: %s", exc.one_line())
    return None
