"""Turn command-line INPUT arguments into a list of cases.

INPUT may be volume files, folders of volume files, DICOM series folders, or a manifest CSV
written by ``medgen preprocess`` (whose rows point at preprocessed outputs). Folders are scanned
one level deep for volume files; a folder with no volume files is read as a DICOM series folder.
Hidden entries (``.*``) are never cases: medgen's temporary files and ledgers are hidden.

This is the one place that turns inputs into cases (:func:`collect_inputs`) and pairs image cases
with label-map cases (:func:`pair_inputs`, by case id; by position only as a logged, explicit choice).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from medgen.errors import InputError
from medgen.io.readers import is_volume_file
from medgen.io.volume import case_id_from_path

log = logging.getLogger(__name__)


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


def _csv_rows(path: Path, what: str, fix: str) -> list[dict]:
    """The rows of a CSV file; InputError (``cannot be read as WHAT``) when it cannot be read."""
    try:
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise InputError(f"cannot be read as {what} ({exc})", path=path, fix=fix) from exc


def read_manifest_cases(path: Path, *, ok_only: bool = True) -> list[CaseInput]:
    """Cases of a manifest written by ``medgen preprocess`` (rows with ``status == ok``)."""
    rows = _csv_rows(path, "a manifest CSV", "pass a manifest.csv written by medgen preprocess")
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


def collect_inputs(inputs: list[str | Path], *, sources: bool = False) -> list[CaseInput]:
    """Expand INPUT arguments into cases with unique ids (``_2``, ``_3``... on clashes).

    Args:
        inputs: volume files, folders, DICOM series folders, manifest or case-list CSVs.
        sources: read inputs as sources to preprocess (``medgen preprocess``): a CSV lists source
            volumes (columns ``source_path`` or ``path``, optional ``case_id`` and ``label_path``; a
            manifest written by ``medgen preprocess`` re-reads its sources) instead of pointing at
            preprocessed outputs, and same-named files in different folders (``case1/ct.nii.gz``,
            ``case2/ct.nii.gz``) are named after their folder.

    Raises:
        InputError: an input does not exist, a folder is empty, a CSV cannot be read.
    """
    cases: list[CaseInput] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise InputError("does not exist", path=path, fix="check the path")
        if path.is_dir() and not _visible(path):
            raise InputError("is an empty folder", path=path, fix="pass a folder holding volumes or a DICOM series")
        if is_manifest(path):
            cases += read_case_list(path) if sources else read_manifest_cases(path)
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
    return _unique_ids(_name_by_folder(cases) if sources else cases)


def read_case_list(path: Path) -> list[CaseInput]:
    """Source cases of a CSV case list (``source_path``/``path``, optional ``case_id``, ``label_path``).

    A manifest written by ``medgen preprocess`` also works: its ``source_path`` and
    ``label_source_path`` are re-read. The label path is kept in ``row["label_path"]``.
    """
    rows = _csv_rows(path, "a CSV", "pass a CSV with a source_path column")
    if rows and not ({"source_path", "path"} & set(rows[0])):
        raise InputError("is a CSV without a 'source_path' (or 'path') column", path=path,
                         fix="list one case per row with a source_path column (optional case_id, label_path)")
    cases = []
    for row in rows:
        source = Path(row.get("source_path") or row.get("path") or "")
        if not source.is_absolute():
            source = path.parent / source
        case_id = case_id_from_path(row.get("case_id") or source)
        # a medgen manifest keeps the source label in label_source_path (label_path is its output)
        label = row.get("label_source_path") if "label_source_path" in row else row.get("label_path")
        if label and not Path(label).is_absolute():
            label = str(path.parent / label)
        cases.append(CaseInput(case_id, source, row={"label_path": label or None}))
    return cases


def _name_by_folder(cases: list[CaseInput]) -> list[CaseInput]:
    """Files with the same name in different folders are named after their folder."""
    names: dict[str, int] = {}
    for case in cases:
        if case.path.is_file():
            names[case.path.name] = names.get(case.path.name, 0) + 1
    out = []
    for case in cases:
        if case.path.is_file() and names.get(case.path.name, 0) > 1 and case.row is None:
            case = CaseInput(case_id_from_path(case.path.parent), case.path, case.preprocessed, case.row)
        out.append(case)
    return out


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


# ----------------------------------------------------------------------------------------------
# Pairing images with label maps
# ----------------------------------------------------------------------------------------------

#: Role suffixes ignored when pairing an image with its label map by case id.
PAIRING_SUFFIXES = ("_ct", "_mr", "_image", "_img", "_seg", "_segmentation", "_labels", "_label", "_mask")
_PAIRING_FIX = ("name label maps like their images (case7.nii.gz + case7_seg.nii.gz, or case7/ct.nii.gz + "
                "case7/labels.nii.gz), or pass as many label maps as images with case ids that do not match "
                "(paired by position)")


def pairing_key(case_id: str) -> str:
    """Case id without trailing role suffixes (``_ct``, ``_seg``, ``_labels``...), for pairing.

    Examples:
        >>> pairing_key("patient7_seg"), pairing_key("patient7_ct"), pairing_key("patient7_ct_mask")
        ('patient7', 'patient7', 'patient7')
    """
    key = case_id
    changed = True
    while changed:
        changed = False
        for suffix in PAIRING_SUFFIXES:
            if key.lower().endswith(suffix) and len(key) > len(suffix):
                key, changed = key[: -len(suffix)], True
    return key


def pair_inputs(images: list[CaseInput], labels: list[CaseInput], *,
                every_image: bool = True) -> list[tuple[CaseInput, CaseInput]]:
    """Pair image cases with label-map cases by case id (role suffixes ignored: :func:`pairing_key`).

    A label map pairs with the image of the same id, else of the same :func:`pairing_key`.
    Only when no case id matches at all and the counts are equal are they paired by position,
    an explicit choice logged at WARNING naming every pair.

    Args:
        images, labels: collected cases (:func:`collect_inputs`).
        every_image: every image needs a label map (training); False lets some images go without
            (``medgen preprocess``), but every label map must still pair with an image.

    Returns:
        ``(image, label)`` pairs in image order.

    Raises:
        InputError: a label map matching no image or several, two label maps for one image, an image
            without a label map (``every_image``), or counts that differ while no id matches.

    Examples:
        >>> img = [CaseInput("p1", Path("p1.nii.gz")), CaseInput("p2", Path("p2.nii.gz"))]
        >>> lab = [CaseInput("p2_seg", Path("p2_seg.nii.gz")), CaseInput("p1_seg", Path("p1_seg.nii.gz"))]
        >>> [(i.case_id, l.case_id) for i, l in pair_inputs(img, lab)]
        [('p1', 'p1_seg'), ('p2', 'p2_seg')]
    """
    exact = {img.case_id: img for img in images}
    by_key: dict[str, list[CaseInput]] = {}
    for img in images:
        by_key.setdefault(pairing_key(img.case_id), []).append(img)
    matched: dict[str, CaseInput] = {}
    misses: list[CaseInput] = []
    for lab in labels:
        hits = [exact[lab.case_id]] if lab.case_id in exact else by_key.get(pairing_key(lab.case_id), [])
        if len(hits) > 1:
            raise InputError(f"label map '{lab.case_id}' matches {len(hits)} image cases "
                             f"({', '.join(h.case_id for h in hits)})", path=lab.path, fix=_PAIRING_FIX)
        if not hits:
            misses.append(lab)
        elif hits[0].case_id in matched:
            raise InputError(f"a second label map for case '{hits[0].case_id}' (the first: "
                             f"{matched[hits[0].case_id].path})", path=lab.path, fix="pass one label map per image")
        else:
            matched[hits[0].case_id] = lab
    unpaired = [img for img in images if img.case_id not in matched] if every_image else []
    if not misses and not unpaired:
        return [(img, matched[img.case_id]) for img in images if img.case_id in matched]
    if not matched and len(images) == len(labels):
        shown = ", ".join(f"{i.case_id} <- {lab.case_id}" for i, lab in list(zip(images, labels))[:20])
        more = f" ... ({len(images) - 20} more)" if len(images) > 20 else ""
        log.warning("pairing %d images with label maps by position, as no case ids match: %s%s",
                    len(images), shown, more)
        return list(zip(images, labels))
    if not matched:
        where = labels[0].path if labels else (images[0].path if images else None)
        raise InputError(f"{len(images)} images but {len(labels)} label maps, and no case ids match", path=where,
                         fix=_PAIRING_FIX)
    if misses:
        raise InputError(f"label map '{misses[0].case_id}' matches 0 image cases", path=misses[0].path,
                         fix=_PAIRING_FIX)
    raise InputError(f"image '{unpaired[0].case_id}' has no label map", path=unpaired[0].path, fix=_PAIRING_FIX)


def collect_pairs(images: list[str | Path], labels: list[str | Path]) -> list[tuple[CaseInput, CaseInput]]:
    """:func:`pair_inputs` of the collected ``images`` and ``labels`` (every image needs a label map).

    Raises:
        InputError: no images found, or pairing fails (see :func:`pair_inputs`).
    """
    img_cases = collect_inputs(list(images))
    if not img_cases:
        raise InputError("no images given", path=", ".join(map(str, images)) or None,
                         fix="pass --images FILE_OR_FOLDER ...")
    return pair_inputs(img_cases, collect_inputs(list(labels)))
