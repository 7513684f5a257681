"""Write a :class:`Volume` as a complete single-frame DICOM series (CT or MR Image Storage).

Used by the tests (geometry round trips, bad-series cases), by the demo (DICOM input) and by
anyone who needs a DICOM series for a viewer or a PACS. Geometry conventions (DICOM PS3.3
C.7.6.2): one file per slice along the volume's third array axis; a slice's pixel matrix is
(rows, columns) where the column index runs along the volume's first array axis, so

* ``ImageOrientationPatient`` = the LPS direction of array axis 0 (along a row) then of axis 1
  (down a column);
* ``PixelSpacing`` = (spacing between rows, spacing between columns) = (axis-1, axis-0 spacing);
* ``ImagePositionPatient`` = the LPS centre of voxel (0, 0, k).

The slice axis must be perpendicular to the image plane (DICOM cannot store a sheared grid);
it may point either way along the plane normal (a "negated slice direction"): readers order
slices by position, so a series read back may list the slices in the opposite order.

The series is written into a temporary folder beside the destination and renamed into place,
so a crash never leaves a half-written series that looks complete.
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, PYDICOM_IMPLEMENTATION_UID, generate_uid

from medgen.errors import OutputError
from medgen.io.volume import Volume

log = logging.getLogger(__name__)

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage}
INSTANCE_ORDERS = ("natural", "reversed", "shuffled")
INT16_MIN, INT16_MAX = -32768, 32767


def format_ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) as precise as that allows.

    Examples:
        >>> format_ds(0.5), format_ds(-1024.0), len(format_ds(1 / 3))
        ('0.5', '-1024', 16)
    """
    value = float(value)
    if value == 0:
        return "0"
    for digits in range(16, 0, -1):
        text = f"{value:.{digits}g}"
        if "e" in text:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}e{int(exponent)}"
        if len(text) <= 16:
            return text
    raise ValueError(f"cannot format {value} as a DICOM decimal string")


def _rescale(array: np.ndarray) -> tuple[np.ndarray, str, str]:
    """Stored int16 values and (slope, intercept) decimal strings with ``array ~= stored*slope+intercept``.

    Whole-number data that fits int16 is stored exactly (slope 1, intercept 0); anything else is
    spread over the int16 range, so the error is at most half a quantisation step (range / 65535 / 2).
    """
    finite = array[np.isfinite(array)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if np.all(array == np.round(array)) and lo >= INT16_MIN and hi <= INT16_MAX:
        return array.astype(np.int16), "1", "0"
    intercept_f = (lo + hi) / 2.0
    slope_f = max((hi - lo) / (INT16_MAX - INT16_MIN - 2), 1e-12)
    slope, intercept = format_ds(slope_f), format_ds(intercept_f)
    stored = np.round((array.astype(np.float64) - float(intercept)) / float(slope))
    stored = np.clip(stored, INT16_MIN, INT16_MAX).astype(np.int16)
    return stored, slope, intercept


def _plane_geometry(volume: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Row/column direction cosines, per-slice origins (all LPS) and spacing; rejects sheared grids."""
    affine_lps = RAS_TO_LPS @ np.asarray(volume.affine, np.float64)
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    axes = affine_lps[:3, :3] / spacing[None, :]
    row, col, slice_dir = axes[:, 0], axes[:, 1], axes[:, 2]
    normal = np.cross(row, col)
    if abs(float(np.dot(row, col))) > 1e-4 or abs(abs(float(np.dot(normal, slice_dir))) - 1.0) > 1e-4:
        raise ValueError("the volume's axes are not orthogonal (sheared grid); a DICOM series cannot store it")
    ks = np.arange(volume.shape[2], dtype=np.float64)
    origins = affine_lps[:3, 3][None, :] + ks[:, None] * affine_lps[:3, 2][None, :]
    return row, col, origins, tuple(float(s) for s in spacing)


def _instance_numbers(n: int, order: str, seed: int) -> np.ndarray:
    if order not in INSTANCE_ORDERS:
        raise ValueError(f"instance_order must be one of {INSTANCE_ORDERS}, got {order!r}")
    numbers = np.arange(1, n + 1)
    if order == "reversed":
        return numbers[::-1].copy()
    if order == "shuffled":
        return np.random.default_rng(seed).permutation(numbers)
    return numbers


def _base_dataset(*, modality: str, patient_id: str, patient_name: str, study_uid: str, series_uid: str,
                  frame_uid: str, series_description: str, series_number: int, study_id: str,
                  when: _dt.datetime) -> Dataset:
    """Attributes shared by every slice (patient, study, series, frame of reference, equipment)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SOP_CLASSES[modality]
    ds.Modality = modality
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = time
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "medgen"
    ds.ManufacturerModelName = "medgen.io.dicom_write"
    ds.SoftwareVersions = "medgen"
    ds.InstitutionName = ""
    ds.StudyDescription = "medgen"
    ds.SeriesDescription = series_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study_id
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = ""
    if modality == "CT":
        ds.KVP = ""
    else:
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = ""
        ds.EchoTime = ""
        ds.EchoTrainLength = ""
        ds.MagneticFieldStrength = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    return ds


def write_dicom_series(volume: Volume, folder: str | Path, *, modality: str = "CT",
                       series_description: str = "medgen", patient_id: str = "MEDGEN",
                       patient_name: str = "medgen^phantom", study_uid: str | None = None,
                       series_uid: str | None = None, frame_of_reference_uid: str | None = None,
                       series_number: int = 1, overwrite: bool = False, inputs: tuple = (),
                       instance_order: str = "natural", seed: int = 0) -> Path:
    """Write ``volume`` as a DICOM series folder, one CT or MR Image Storage file per slice.

    Voxel values are stored as int16 with ``RescaleSlope``/``RescaleIntercept`` (exact for whole
    numbers in the int16 range, e.g. HU; otherwise within half a quantisation step of
    ``(max - min) / 65533``). Geometry is stored exactly (decimal strings of up to 16 characters).

    Args:
        volume: the 3D image; its third array axis becomes the slice axis.
        folder: the series folder to create; it must not exist (or be empty) unless ``overwrite``.
        modality: ``"CT"`` or ``"MR"`` (picks the SOP class).
        series_description, patient_id, patient_name, series_number: header values.
        study_uid, series_uid, frame_of_reference_uid: UIDs to use (new ones by default). Pass the
            same ``study_uid``/``frame_of_reference_uid`` to put several series in one study/frame.
        overwrite: replace an existing folder (never one of ``inputs``).
        inputs: paths that must never be overwritten.
        instance_order: ``"natural"`` (InstanceNumber follows the slice index), ``"reversed"`` or
            ``"shuffled"``; file names follow InstanceNumber. For tests proving that readers order
            slices by position, never by InstanceNumber or file name.
        seed: the shuffle's seed.

    Returns:
        The series folder.

    Raises:
        OutputError: the folder exists (without ``overwrite``), is an input, or cannot be written.
        ValueError: wrong modality, not a 3D volume, or a sheared grid.

    Examples:
        >>> import numpy as np, tempfile, pathlib
        >>> vol = Volume(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.diag([0.5, 0.7, 2.0, 1.0]))
        >>> out = write_dicom_series(vol, pathlib.Path(tempfile.mkdtemp()) / "series")
        >>> len(list(out.glob("*.dcm")))
        4
    """
    modality = modality.upper()
    if modality not in SOP_CLASSES:
        raise ValueError(f"modality must be CT or MR, got {modality!r}")
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise ValueError(f"write_dicom_series needs a 3D volume, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("the volume has NaN/Inf voxels; DICOM cannot store them")
    folder = Path(folder)
    resolved = folder.resolve()
    for item in tuple(inputs) + (volume.source,):
        if item is not None and Path(item).resolve() == resolved:
            raise OutputError("is an input; medgen never overwrites its inputs", path=folder,
                              fix="choose another output folder")
    if folder.exists() and not folder.is_dir():
        raise OutputError("exists and is not a folder", path=folder, fix="choose another output folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise OutputError("already exists", path=folder, fix="choose another folder or pass --overwrite")

    row, col, origins, spacing = _plane_geometry(volume)
    stored, slope, intercept = _rescale(array)
    numbers = _instance_numbers(array.shape[2], instance_order, seed)
    base = _base_dataset(modality=modality, patient_id=patient_id, patient_name=patient_name,
                         study_uid=study_uid or generate_uid(), series_uid=series_uid or generate_uid(),
                         frame_uid=frame_of_reference_uid or generate_uid(), series_description=series_description,
                         series_number=series_number, study_id="1", when=_dt.datetime.now())
    base.ImageOrientationPatient = [format_ds(v) for v in (*row, *col)]
    base.PixelSpacing = [format_ds(spacing[1]), format_ds(spacing[0])]  # (between rows, between columns)
    base.SliceThickness = format_ds(spacing[2])
    base.SpacingBetweenSlices = format_ds(spacing[2])
    base.Rows, base.Columns = int(array.shape[1]), int(array.shape[0])
    base.RescaleSlope, base.RescaleIntercept = slope, intercept
    base.RescaleType = "HU" if modality == "CT" else "US"
    base.WindowCenter, base.WindowWidth = _window(array)
    normal = np.cross(row, col)

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        for k in range(array.shape[2]):
            ds = copy.deepcopy(base)
            ds.SOPInstanceUID = generate_uid()
            ds.InstanceNumber = int(numbers[k])
            ds.ImagePositionPatient = [format_ds(v) for v in origins[k]]
            ds.SliceLocation = format_ds(float(np.dot(normal, origins[k])))
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<i2").tobytes()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds.file_meta = meta
            ds.save_as(tmp / f"IM{int(numbers[k]):05d}.dcm", enforce_file_format=True)
        _replace_folder(tmp, folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"could not be written ({exc.strerror or exc})", path=folder,
                          fix="check free disk space and permissions") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d-slice %s DICOM series %s to %s", array.shape[2], modality, base.SeriesInstanceUID, folder)
    return folder


def _window(array: np.ndarray) -> tuple[str, str]:
    lo, hi = np.percentile(array, [1, 99]) if array.size else (0.0, 1.0)
    return format_ds((lo + hi) / 2), format_ds(max(hi - lo, 1.0))


def _replace_folder(tmp: Path, folder: Path) -> None:
    """Move the finished temporary folder to ``folder``; an old folder is removed only afterwards."""
    old = None
    if folder.exists():
        old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".old"))
        os.rmdir(old)
        os.replace(folder, old)
    try:
        os.replace(tmp, folder)
    except BaseException:
        if old is not None:
            os.replace(old, folder)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_series_headers(folder: str | Path) -> list[Dataset]:
    """Headers (no pixels) of every ``*.dcm`` file in ``folder``, in file-name order."""
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(Path(folder).glob("*.dcm"))]
