"""Read any supported volume into a :class:`Volume`, with clear errors for bad input.

Supported: NIfTI (``.nii``, ``.nii.gz``) through nibabel; NRRD (``.nrrd``, ``.nhdr``) and
MetaImage (``.mha``, ``.mhd``) through SimpleITK; DICOM series folders through SimpleITK's GDCM
series reader (see :mod:`medgen.io.dicom`).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medgen.errors import InputError
from medgen.io.dicom import read_dicom_series
from medgen.io.sitk_convert import volume_from_sitk
from medgen.io.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES


def labels_json_path(mask_path: Path) -> Path:
    """Where the label names of a mask written by ``segment``/``segment-mr`` lie: beside it.

    Examples:
        >>> labels_json_path(Path("out/case1.nii.gz")).as_posix()
        'out/case1.labels.json'
    """
    name = mask_path.name
    for ext in VOLUME_SUFFIXES:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return mask_path.with_name(name + ".labels.json")


#: DICOM modalities that are not images: segmentations, structure sets, dose, plans, reports, registrations...
NON_IMAGE_MODALITIES = {"SEG": "segmentation (DICOM SEG)", "RTSTRUCT": "RT structure set", "RTDOSE": "RT dose",
                        "RTPLAN": "RT plan", "RTRECORD": "RT treatment record", "SR": "structured report",
                        "PR": "presentation state", "KO": "key-object selection", "REG": "registration",
                        "DOC": "encapsulated document", "PLAN": "plan", "RWV": "real-world value map"}
#: Label ids must fit a 32-bit signed integer (what NIfTI/NRRD label maps and torch indices hold).
LABEL_ID_MAX = int(np.iinfo(np.int32).max)


def is_volume_file(path: str | Path) -> bool:
    """True when the file name has a supported volume extension."""
    return str(path).lower().endswith(VOLUME_SUFFIXES)


def read_volume(path: str | Path, *, series_uid: str | None = None, kind: str = "image") -> Volume:
    """Read a volume file or DICOM series folder and check it is a usable 3D volume.

    Args:
        path: a NIfTI/NRRD/MHA/MHD file or a DICOM series folder.
        series_uid: the series to read from a folder holding several.
        kind: ``"image"`` (float32 voxels) or ``"label"`` (integer voxels, must be whole numbers).

    Raises:
        InputError: naming the file and the fix, for missing, corrupt, non-image, 2D, 4D,
            NaN/Inf-filled volumes and ambiguous DICOM folders.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("does not exist", path=path, fix="check the path")
    if path.is_dir():
        volume = read_dicom_series(path, series_uid)
        _refuse_non_image(volume.meta.get("modality"), path, kind)
    elif path.name.lower().endswith(NIFTI_SUFFIXES):
        volume = _read_nifti(path)
    elif path.name.lower().endswith(SITK_SUFFIXES):
        volume = _read_sitk(path)
    elif path.name.lower().endswith(".dcm"):
        _refuse_non_image(_dicom_file_modality(path), path, kind)
        volume = read_dicom_series(path.parent, series_uid)
        _refuse_non_image(volume.meta.get("modality"), path, kind)
    else:
        raise InputError(f"unsupported file type '{''.join(path.suffixes) or path.name}'", path=path,
                         fix="use NIfTI (.nii/.nii.gz), NRRD (.nrrd), MetaImage (.mha/.mhd) or a DICOM series folder")
    return check_volume(volume, kind=kind)


def _dicom_file_modality(path: Path) -> str | None:
    import pydicom
    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True).get("Modality", "")) or None
    except Exception:  # noqa: BLE001 - unreadable here: the series reader reports it properly
        return None


def _refuse_non_image(modality: str | None, path: Path, kind: str) -> None:
    """A DICOM SEG, RT structure set, report... is not an image (a SEG read as one looks like an MR)."""
    what = NON_IMAGE_MODALITIES.get((modality or "").upper())
    if what is None or kind != "image":
        return
    fix = "pass the image series (e.g. the CT/MR folder a SEG references); a DICOM SEG holds labels, not voxels"
    raise InputError(f"is a DICOM {modality} object ({what}), not an image", path=path, fix=fix)


def _check_nifti_geometry(image, path: Path, ndim: int) -> None:
    """Refuse a NIfTI whose voxel-to-world geometry is undefined (no sform, no qform, pixdim <= 0)."""
    header = image.header
    try:  # nibabel "repairs" pixdim 0 to 1 while loading; judge the header as stored
        with nib.openers.ImageOpener(str(path)) as fh:
            header = type(image.header).from_fileobj(fh, check=False)
    except Exception:  # noqa: BLE001 - the loaded header is the next best thing
        pass
    sform, qform = int(header["sform_code"]), int(header["qform_code"])
    if sform > 0 or qform > 0:
        return  # an explicit affine; check_volume refuses a singular one
    zooms = [float(z) for z in header["pixdim"][1:1 + min(3, ndim)]]
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise InputError(f"has no defined geometry: sform_code 0, qform_code 0 and pixdim[1:4] = "
                         f"{[round(z, 6) for z in zooms]} (voxel size must be > 0)", path=path,
                         fix="write the voxel size and orientation into the header (e.g. nibabel set_sform/"
                             "set_qform with the scanner affine) and re-export")


def _read_nifti(path: Path) -> Volume:
    if path.stat().st_size == 0:
        raise InputError("is an empty file", path=path, fix="re-export or re-download the file")
    try:
        image = nib.load(str(path))
        array = np.asanyarray(image.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError,
            nib.spatialimages.HeaderDataError) as exc:
        raise InputError(f"cannot be read as NIfTI: truncated or not a NIfTI file ({exc})", path=path,
                         fix="re-export or re-download the file; check it is really a NIfTI image") from exc
    _check_nifti_geometry(image, path, array.ndim)
    return Volume(array, image.affine.astype(np.float64), source=str(path))


def _read_sitk(path: Path) -> Volume:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetGlobalWarningDisplay(False)
    try:
        reader.ReadImageInformation()
        dim = reader.GetDimension()
        image_shape = tuple(reader.GetSize())
        singleton_4d = dim == 4 and image_shape[3] == 1
        if dim != 3 and not singleton_4d:
            raise InputError(f"is a {dim}D image of size {image_shape}; medgen needs a 3D volume", path=path,
                             fix=_dimension_fix(dim))
        image = reader.Execute()
        if singleton_4d:  # a 3D volume stored with a trailing time axis of length 1
            image = sitk.Extract(image, image_shape[:3] + (0,), (0, 0, 0, 0))
    except RuntimeError as exc:
        raise InputError(f"cannot be read: truncated or not an image ({str(exc).strip().splitlines()[-1][:160]})",
                         path=path, fix="re-export or re-download the file") from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"has {image.GetNumberOfComponentsPerPixel()} components per voxel (vector/RGB image)",
                         path=path, fix="pass a scalar (grey-level) volume")
    return volume_from_sitk(image, source=str(path))


def _dimension_fix(ndim: int) -> str:
    if ndim < 3:
        return "pass the whole 3D volume (or DICOM series folder), not a single slice"
    return "extract one 3D frame first (e.g. one time point or echo)"


def check_volume(volume: Volume, *, kind: str = "image") -> Volume:
    """Validate dimensionality and values; return the volume with a canonical dtype.

    A trailing singleton 4th axis (common in NIfTI exports) is dropped; a real 4D volume,
    a 2D image, NaN/Inf voxels and non-integer label values are errors.
    """
    array = np.asarray(volume.array)
    if np.iscomplexobj(array) or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise InputError(f"has {array.dtype} voxels, not real numbers", path=volume.name,
                         fix="export the magnitude (or the real part) as a real-valued volume")
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        shape = "x".join(str(s) for s in array.shape)
        raise InputError(f"is a {array.ndim}D array ({shape}); medgen needs a 3D volume", path=volume.name,
                         fix=_dimension_fix(array.ndim))
    if min(array.shape) < 2 and kind == "image":
        raise InputError(f"has shape {array.shape}: a single slice, not a 3D volume", path=volume.name,
                         fix=_dimension_fix(2))
    if not np.all(np.isfinite(volume.affine)) or abs(np.linalg.det(volume.affine[:3, :3])) < 1e-9:
        raise InputError("has an invalid (singular or non-finite) voxel-to-world affine", path=volume.name,
                         fix="repair the header (spacing and direction) and re-export")
    if kind == "label":
        if np.issubdtype(array.dtype, np.floating):
            if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
                raise InputError("is a label map with non-integer or NaN values", path=volume.name,
                                 fix="pass an integer label map (not a probability map or image)")
        if array.size and array.min() < 0:
            raise InputError("is a label map with negative ids", path=volume.name, fix="label ids must be >= 0")
        top = array.max(initial=0)
        if top > LABEL_ID_MAX:
            raise InputError(f"is a label map with ids up to {top:.0f}, above the 32-bit range ({LABEL_ID_MAX})",
                             path=volume.name, fix=f"renumber the labels to ids 0..{LABEL_ID_MAX} (e.g. 1, 2, 3...)")
        array = array.astype(np.uint8 if top <= 255 else np.int16 if top <= 32767 else np.int32)
    else:
        array = array.astype(np.float32, copy=False)
        n_bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if n_bad:
            raise InputError(f"has {n_bad} NaN/Inf voxels", path=volume.name,
                             fix="repair the export, or replace non-finite voxels (e.g. numpy.nan_to_num) before medgen")
    return Volume(array, volume.affine, volume.source, volume.series_uid, dict(volume.meta))
