"""The preprocessing manifest: one CSV row per case, rewritten atomically after every case.

Columns (see :data:`COLUMNS`): case id, status (``ok`` | ``failed`` | ``pending``), error, source
path, content hash (SHA-256 of the file, or of every file of a DICOM folder in sorted order),
modality, original shape/spacing/orientation, the output, record, mask and label paths
(relative to the manifest's folder, so the folder can be moved), the config hash, and timing.

Crash safety without quadratic I/O: each finished case is appended as one JSON line to a
journal beside the CSV (``manifest.journal.jsonl``, flushed and fsynced), and the CSV itself is
rewritten atomically (:func:`medgen.io.atomic.write_text_atomic`) every few seconds and at the
end, after which the journal is removed. A ``kill -9`` at any moment therefore leaves a complete
CSV plus a journal whose complete lines are replayed on the next run (a torn last line is
ignored), so a re-run knows every case that finished and never sees a half-written row.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path

from medgen.errors import OutputError
from medgen.io.atomic import write_text_atomic

COLUMNS = (
    "case_id", "status", "error", "source_path", "label_source_path", "series_uid", "content_hash", "modality",
    "original_shape", "original_spacing", "original_orientation", "output_path", "record_path", "mask_path",
    "label_path", "output_shape", "output_spacing", "config_hash", "seconds",
)

_CHUNK = 1 << 20


def content_hash(path: str | Path) -> str:
    """SHA-256 of a file, or of a folder's files (relative names and bytes, sorted, hidden files skipped).

    Examples:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "a.dcm").write_bytes(b"x")
        >>> content_hash(d) == content_hash(d) and len(content_hash(d / "a.dcm"))
        64
    """
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    for file in files:
        if file is not path:
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(chunk)
    return digest.hexdigest()


def format_tuple(values) -> str:
    """``(122, 101, 112)`` -> ``'122x101x112'`` (floats rounded to 4 decimals)."""
    return "x".join(f"{round(float(v), 4):g}" if isinstance(v, float) else str(v) for v in values)


def read_manifest(path: str | Path) -> dict[str, dict]:
    """Rows of an existing manifest by case id (empty when the file does not exist).

    Raises:
        OutputError: the file exists but is not a medgen manifest (it would be overwritten).
    """
    path = Path(path)
    if not path.exists():
        return {}
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise OutputError(f"exists but cannot be read as a manifest ({exc})", path=path,
                          fix="move it away or choose another output folder") from exc
    if rows and not {"case_id", "status"} <= set(rows[0]):
        raise OutputError("exists but is not a medgen manifest (no case_id/status columns)", path=path,
                          fix="move it away or choose another output folder")
    return {row["case_id"]: {c: row.get(c, "") or "" for c in COLUMNS} for row in rows}


class Manifest:
    """An in-memory manifest bound to a CSV path; :meth:`save` rewrites it atomically.

    Args:
        path: the CSV file (``OUT_DIR/manifest.csv``).

    Examples:
        >>> import tempfile, pathlib
        >>> m = Manifest(pathlib.Path(tempfile.mkdtemp()) / "manifest.csv")
        >>> m.update({"case_id": "a", "status": "ok"}); _ = m.save()
        >>> Manifest(m.path).rows["a"]["status"]
        'ok'
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.journal = self.path.with_name(self.path.stem + ".journal.jsonl")
        self.rows: dict[str, dict] = read_manifest(self.path)
        for row in _read_journal(self.journal):
            self.update(row)

    def get(self, case_id: str) -> dict | None:
        return self.rows.get(case_id)

    def update(self, row: dict) -> None:
        """Insert or replace the row of ``row['case_id']`` (unknown keys are rejected)."""
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown manifest columns: {sorted(unknown)}")
        clean = {c: _cell(row.get(c, "")) for c in COLUMNS}
        self.rows[clean["case_id"]] = clean

    def commit(self, row: dict) -> None:
        """:meth:`update` and append the row to the journal (durable at once, O(1) per case)."""
        self.update(row)
        line = json.dumps(self.rows[row["case_id"]]) + "\n"
        with open(self.journal, "a") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows.values())
        return buffer.getvalue()

    def save(self) -> Path:
        """Rewrite the whole CSV atomically, then drop the journal it now contains."""
        write_text_atomic(self.path, self.to_csv())
        self.journal.unlink(missing_ok=True)
        return self.path

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows.values():
            out[row["status"]] = out.get(row["status"], 0) + 1
        return out


def _read_journal(path: Path) -> list[dict]:
    """Complete rows of a journal left by an interrupted run (a torn last line is skipped)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("case_id"):
            rows.append({c: row.get(c, "") for c in COLUMNS})
    return rows


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return format_tuple(value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value).replace("\n", " ").replace("\r", " ")
