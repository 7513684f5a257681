"""Turn command-line INPUT arguments into a list of cases.

INPUT may be volume files, folders of volume files, DICOM series folders, or a manifest CSV
written by ``medgen preprocess`` (whose rows point at preprocessed outputs). Folders are scanned
one level deep for volume files; a folder with no volume files is read as a DICOM series folder.
Hidden entries (``.*``) are never cases: medgen's temporary files and ledgers are hidden.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from medgen.errors import InputError
from medgen.io.readers import is_volume_file
from medgen.io.volume import case_id_from_path


@dataclass(frozen=True)
class CaseInput:
    """One case to process: where it is and what to call it.

    Attributes:
        case_id: unique, filesystem-safe name (used for output file names).
        path: a volume file or DICOM series folder.
        preprocessed: True when ``path`` is already a preprocessed output (from a manifest).
        row: the manifest row it came from, if any.
    """

    case_id: str
    path: Path
    preprocessed: bool = False
    row: dict | None = None


def is_manifest(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".csv"


def read_manifest_cases(path: Path, *, ok_only: bool = True) -> list[CaseInput]:
    """Cases of a manifest written by ``medgen preprocess`` (rows with ``status == ok``)."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise InputError(f"cannot be read as a manifest CSV ({exc})", path=path,
                         fix="pass a manifest.csv written by medgen preprocess") from exc
    if rows and "output_path" not in rows[0]:
        raise InputError("is a CSV without an 'output_path' column", path=path,
                         fix="pass a manifest.csv written by medgen preprocess")
    cases = []
    for row in rows:
        if ok_only and row.get("status") not in ("ok", "done"):
            continue
        out = Path(row["output_path"])
        if not out.is_absolute():
            out = path.parent / out
        # the id names output files: sanitised like any id taken from a file name (no "../" escapes)
        cases.append(CaseInput(case_id_from_path(row.get("case_id") or out), out, preprocessed=True, row=row))
    return cases


def collect_inputs(inputs: list[str | Path]) -> list[CaseInput]:
    """Expand INPUT arguments into cases with unique ids (``_2``, ``_3``... on clashes).

    Raises:
        InputError: an input does not exist or a folder holds nothing readable.
    """
    cases: list[CaseInput] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise InputError("does not exist", path=path, fix="check the path")
        if is_manifest(path):
            cases += read_manifest_cases(path)
        elif path.is_file():
            cases.append(CaseInput(case_id_from_path(path), path))
        else:
            entries = _visible(path)
            files = sorted(p for p in entries if p.is_file() and is_volume_file(p))
            subdirs = sorted(p for p in entries if p.is_dir())
            if files:
                cases += [CaseInput(case_id_from_path(p), p) for p in files]
            elif subdirs and not any(p.is_file() for p in entries):
                # a folder of case folders (each a DICOM series or holding volumes)
                for sub in subdirs:
                    sub_files = sorted(p for p in _visible(sub) if p.is_file() and is_volume_file(p))
                    cases += [CaseInput(f"{case_id_from_path(sub)}_{case_id_from_path(p)}", p) for p in sub_files] \
                        or [CaseInput(case_id_from_path(sub), sub)]
            else:
                cases.append(CaseInput(case_id_from_path(path), path))  # a DICOM series folder
    return _unique_ids(cases)


def _visible(folder: Path) -> list[Path]:
    """A folder's entries without hidden ones (``.*``: temporary files, ledgers, OS metadata)."""
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


def _unique_ids(cases: list[CaseInput]) -> list[CaseInput]:
    seen: dict[str, int] = {}
    out = []
    for case in cases:
        n = seen.get(case.case_id, 0) + 1
        seen[case.case_id] = n
        out.append(case if n == 1 else CaseInput(f"{case.case_id}_{n}", case.path, case.preprocessed, case.row))
    return out
