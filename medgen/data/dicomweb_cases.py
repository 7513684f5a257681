"""DICOMweb series as cases of the per-case commands (``segment``, ``segment-mr``).

:func:`collect_cases` expands command-line inputs where some are DICOMweb URLs: a series URL is
one case, a study URL or a QIDO-RS query (``<root>/series?PatientID=...``) is one case per series of
the command's modality (``MR`` for ``segment-mr``) found; everything else goes through :func:`medgen.data.inputs.collect_inputs`.
:func:`run_on_source` runs a case's work on a local path, or on a temporary local copy of a
DICOMweb series (removed afterwards), and then pushes the results back to the same study:
the DICOM SEG as it is, the synthetic CT as a new CT series of the study (same patient, study and
frame of reference, new series UID).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from medgen.io.dicomweb import (DicomWebRef, download_series, is_dicomweb_url, is_query_url, list_series,
                                parse_url, query_series, store)
from medgen.data.inputs import collect_inputs
from medgen.errors import InputError
from medgen.io.dicom_write import write_dicom_series
from medgen.io.readers import read_volume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteCase:
    """One DICOMweb series to process (``path`` is its URL, like :class:`CaseInput`'s path)."""

    case_id: str
    path: str


def collect_cases(inputs: list, *, modality: str | None) -> list:
    """Local :class:`~medgen.data.inputs.CaseInput` s and :class:`RemoteCase` s, ids unique.

    Raises:
        InputError: a bad URL, an unreachable server, a study without series of ``modality``.
    """
    local = [i for i in inputs if not is_dicomweb_url(str(i))]
    cases: list = list(collect_inputs(local)) if local else []
    seen = {c.case_id for c in cases}
    for item in inputs:
        if not is_dicomweb_url(str(item)):
            continue
        if is_query_url(str(item)):
            series = query_series(str(item), modality)
        else:
            ref = parse_url(str(item))
            series = [ref] if ref.series_uid else list_series(ref, modality)
        if not series:
            raise InputError(f"no {modality or ''} series found".replace("  ", " "), path=str(item),
                             fix="check the study UID, or pass series URLs")
        for s in series:
            case_id = f"series_{s.series_uid}"
            n = 1
            while case_id in seen:
                n += 1
                case_id = f"series_{s.series_uid}_{n}"
            seen.add(case_id)
            cases.append(RemoteCase(case_id, s.url))
    return cases


def is_dicom_source(source) -> bool:
    """A DICOMweb URL, a folder or a ``.dcm`` file: something a DICOM SEG can reference."""
    text = str(source)
    return is_dicomweb_url(text) or Path(text).is_dir() or text.lower().endswith(".dcm")


def run_on_source(source: str, work: Callable[[Path], object], *, push_seg: bool = False,
                  push_sct: bool = False):
    """``work(path)`` for a local source; for a DICOMweb series, on a temporary local copy, then push.

    ``work`` returns a :class:`~medgen.pipelines.batch.CaseReport`; its ``outputs`` name the files
    to push (``dicom_seg``, ``sct``). The report's ``input`` becomes the URL and
    ``outputs["pushed"]`` lists what was stored (SOPInstanceUIDs).
    """
    if not is_dicomweb_url(source):
        if push_seg or push_sct:
            log.warning("%s: not a DICOMweb series; --push-seg has nowhere to store its results (kept locally)",
                        source)
        return work(Path(source))
    ref = parse_url(source)
    with local_source(source) as folder:
        tmp = folder.parent
        report = work(folder)
        report.input = source
        pushed: list[str] = []
        if push_seg and report.outputs.get("dicom_seg"):
            pushed += store(ref, [report.outputs["dicom_seg"]])
        if push_sct and report.outputs.get("sct"):
            pushed += store(ref, sorted(sct_series(report.outputs["sct"], folder, Path(tmp) / "sct").glob("*.dcm")))
        if pushed:
            report.outputs["pushed"] = pushed
            report.outputs["pushed_to"] = DicomWebRef(ref.base, ref.study_uid).url
    return report


@contextlib.contextmanager
def local_source(source: str | Path) -> Iterator[Path]:
    """A local path for ``source``: itself, or a temporary copy of a DICOMweb series (removed after)."""
    if not is_dicomweb_url(str(source)):
        yield Path(source)
        return
    with tempfile.TemporaryDirectory(prefix="medgen-dicomweb-") as tmp:
        yield download_series(parse_url(str(source)), Path(tmp) / "series")


def sct_series(sct_path: str | Path, source_folder: Path, out_folder: Path) -> Path:
    """The synthetic CT file as a CT DICOM series in the source series' study and frame of reference."""
    import pydicom

    first = pydicom.dcmread(next(iter(sorted(source_folder.glob("*.dcm")))), stop_before_pixels=True)
    volume = read_volume(sct_path)
    return write_dicom_series(volume, out_folder, modality="CT", series_description="medgen synthetic CT",
                              patient_id=str(first.get("PatientID", "")), patient_name=str(first.get("PatientName", "")),
                              study_uid=str(first.StudyInstanceUID),
                              frame_of_reference_uid=str(first.FrameOfReferenceUID), series_number=301)
