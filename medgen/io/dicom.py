"""DICOM series reading with SimpleITK's GDCM series reader.

Slices are ordered by their position along the slice normal (GDCM's sorting), never by
InstanceNumber. A folder holding several series is an error that lists them so the user can pick
one with ``--series-uid``; gaps and uneven slice spacing are errors too, because resampling a
series with a missing slice silently stretches anatomy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from medgen.errors import InputError
from medgen.io.sitk_convert import volume_from_sitk
from medgen.io.volume import Volume


@dataclass(frozen=True)
class SeriesInfo:
    """What a user needs to tell series apart."""

    uid: str
    description: str
    modality: str
    n_slices: int
    files: tuple[str, ...]

    def line(self) -> str:
        desc = self.description or "(no description)"
        return f"{self.uid or '(empty SeriesInstanceUID)'}  {self.modality or '?'}  {self.n_slices} slices  {desc}"


def _series_ids(folder: Path) -> list[str]:
    reader = sitk.ImageSeriesReader()
    reader.SetGlobalWarningDisplay(False)
    return list(reader.GetGDCMSeriesIDs(str(folder)))


def find_series_folder(folder: Path) -> Path:
    """The folder itself if it holds DICOM series, else its single sub-folder that does."""
    if _series_ids(folder):
        return folder
    candidates = [p for p in sorted(folder.rglob("*")) if p.is_dir() and _series_ids(p)]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        files = [p for p in folder.iterdir()] if folder.is_dir() else []
        what = "is empty" if not files else "holds no readable DICOM series or volume files"
        raise InputError(what, path=folder,
                         fix="point the input at a DICOM series folder or a NIfTI/NRRD/MHA file")
    listing = "; ".join(str(c) for c in candidates)
    raise InputError(f"several sub-folders hold DICOM series: {listing}", path=folder,
                     fix="pass the sub-folder of the series you want")


def list_series(folder: str | Path) -> list[SeriesInfo]:
    """All DICOM series in ``folder`` (not recursive), with UID, description, modality, size."""
    folder = Path(folder)
    out = []
    for uid in _series_ids(folder):
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        try:
            ds = pydicom.dcmread(files[0], stop_before_pixels=True)
            desc, modality = str(ds.get("SeriesDescription", "")), str(ds.get("Modality", ""))
        except Exception:  # noqa: BLE001 - a header we cannot parse still shows as a series
            desc, modality = "", ""
        out.append(SeriesInfo(uid, desc, modality, len(files), files))
    return out


def _check_slice_positions(files: tuple[str, ...], folder: Path) -> None:
    """Raise when slices are missing, unevenly spaced, differently oriented or sheared (gantry tilt).

    A 3D grid needs every slice in one plane orientation, stacked straight along the plane normal
    at a constant step; anything else would be silently distorted by a 3D reader.
    """
    if len(files) < 2:
        raise InputError(f"the series has {len(files)} slice; a 3D volume needs several", path=folder,
                         fix="check that the whole series was exported")
    points, orientation = [], None
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["ImagePositionPatient",
                                                                         "ImageOrientationPatient"])
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            return  # not enough geometry to check; SimpleITK falls back to its own handling
        iop = np.asarray(ds.ImageOrientationPatient, float)
        if orientation is None:
            orientation = iop
        elif np.abs(iop - orientation).max() > 1e-3:
            raise InputError("the series mixes slices of different orientations (e.g. a localizer)", path=folder,
                             fix="remove the odd slices or export the 3D series on its own")
        points.append(np.asarray(ds.ImagePositionPatient, float))
    normal = np.cross(orientation[:3], orientation[3:])
    points = np.asarray(points)
    positions = points @ normal
    order = np.argsort(positions)
    gaps = np.diff(positions[order])
    if np.any(gaps < 1e-3):
        raise InputError("the series has several slices at the same position", path=folder,
                         fix="the folder mixes acquisitions; export one series per folder or pick it with --series-uid")
    median = float(np.median(gaps))
    bad = np.abs(gaps - median) > max(0.05 * median, 0.01)
    if np.any(bad):
        worst = float(gaps[bad].max())
        kind = "a missing slice" if worst > 1.5 * median else "uneven slice spacing"
        raise InputError(f"{kind}: slice gaps range {gaps.min():.3g}..{gaps.max():.3g} mm "
                         f"(typical {median:.3g} mm)", path=folder,
                         fix="re-export the complete series, or resample it to a regular grid first")
    steps = np.diff(points[order], axis=0)
    sideways = np.linalg.norm(steps - np.outer(steps @ normal, normal), axis=1)
    if sideways.max() > max(0.01 * median, 1e-3):
        raise InputError(f"slices shift {sideways.max():.3g} mm sideways per step (gantry tilt or sheared "
                         "acquisition): the grid is not rectangular", path=folder,
                         fix="resample the series to a rectangular grid first (e.g. with your scanner software "
                         "or dcm2niix, which corrects gantry tilt)")


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> Volume:
    """Read one DICOM series from ``folder`` into a :class:`Volume` (RAS affine).

    Args:
        folder: a folder of DICOM files (or a folder with exactly one series sub-folder).
        series_uid: which series to read when the folder holds several.

    Raises:
        InputError: no series, several series and no ``series_uid``, unknown ``series_uid``,
            or missing / unevenly spaced slices.
    """
    folder = find_series_folder(Path(folder))
    series = list_series(folder)
    if series_uid is not None:
        chosen = [s for s in series if s.uid == series_uid]
        if not chosen:
            raise InputError(f"no series with UID {series_uid}; the folder holds: "
                             + " | ".join(s.line() for s in series), path=folder,
                             fix="pass one of the listed UIDs with --series-uid")
    elif len(series) > 1:
        raise InputError(f"the folder holds {len(series)} DICOM series: "
                         + " | ".join(s.line() for s in series), path=folder,
                         fix="pick one with --series-uid UID")
    else:
        chosen = series
    info = chosen[0]
    meta = {"modality": info.modality, "description": info.description, "files": list(info.files)}
    if len(info.files) == 1 and _number_of_frames(info.files[0]) > 1:
        return read_multiframe(info.files[0], source=str(folder), series_uid=info.uid or None, meta=meta)
    _check_slice_positions(info.files, folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(info.files))
    # Decode every slice to float with its own Rescale Slope/Intercept. Left to itself, ITK picks the
    # voxel type from the first slice only, truncating slices whose slope differs (PET, some MR).
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"the DICOM series cannot be decoded ({str(exc).strip().splitlines()[-1]})",
                         path=folder, fix="check the files are complete, uncompressed or in a supported transfer syntax") from exc
    return volume_from_sitk(image, source=str(folder), series_uid=info.uid or None, meta=meta)


def _number_of_frames(path: str) -> int:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["NumberOfFrames"])
        return int(ds.get("NumberOfFrames", 1) or 1)
    except Exception:  # noqa: BLE001 - unreadable header: let the series reader report it
        return 1


def volume_from_highdicom(hd_volume, **fields) -> Volume:
    """A :class:`Volume` from a ``highdicom.Volume`` (axes (slice, row, column), LPS affine)."""
    affine = np.asarray(hd_volume.affine, np.float64)
    ras = np.eye(4)
    ras[:3, :] = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :]
    ras[:3, :3] = ras[:3, [2, 1, 0]]  # medgen's axes are (column, row, slice)
    array = np.asarray(hd_volume.array)
    return Volume(np.ascontiguousarray(array.transpose(2, 1, 0)), ras, **fields)


def read_multiframe(path: str | Path, **fields) -> Volume:
    """Read a multi-frame (enhanced) DICOM image whose frames form one regular 3D grid.

    Frames are placed by their per-frame plane positions (highdicom), never by frame order;
    Rescale Slope/Intercept are applied as for single-frame series.

    Raises:
        InputError: the file cannot be decoded or its frames are not one regular 3D volume
            (several time points, echoes or b-values, or uneven spacing).
    """
    import highdicom as hd

    try:
        image = hd.imread(str(path))
        hd_volume = image.get_volume(dtype=np.float32, apply_real_world_transform=False)
    except (ValueError, RuntimeError, KeyError, AttributeError, NotImplementedError) as exc:
        raise InputError(f"the multi-frame DICOM's frames do not form one regular 3D volume ({str(exc)[:200]})",
                         path=path, fix="split it into single 3D volumes (one time point/echo/b-value) and "
                         "pass one, or export as a single-frame series") from exc
    fields.setdefault("source", str(path))
    meta = dict(fields.pop("meta", {}) or {})
    meta["multiframe"] = True
    return volume_from_highdicom(hd_volume, meta=meta, **fields)
