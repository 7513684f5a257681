"""Write volumes with their exact geometry, atomically, never over an input."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medgen.errors import OutputError
from medgen.io.atomic import atomic_path, check_output_path, publish
from medgen.io.readers import NIFTI_SUFFIXES, SITK_SUFFIXES
from medgen.io.sitk_convert import volume_to_sitk
from medgen.io.volume import Volume

DETACHED_SUFFIXES = (".mhd", ".nhdr")


def write_volume(volume: Volume, path: str | Path, *, overwrite: bool = False, inputs: tuple = (),
                 dtype: np.dtype | type | None = None) -> Path:
    """Write ``volume`` to a NIfTI, NRRD or MHA file preserving shape and affine exactly.

    Args:
        volume: what to write.
        path: destination; its extension picks the format.
        overwrite: replace an existing file (never an input).
        inputs: paths that must not be overwritten (the inputs of the current run).
        dtype: voxel type to store (default: the array's own).

    Raises:
        OutputError: the path exists, is an input, has an unsupported extension or cannot be written.
    """
    path = check_output_path(path, overwrite=overwrite, inputs=tuple(inputs) + (volume.source,))
    name = path.name.lower()
    if not name.endswith(NIFTI_SUFFIXES + SITK_SUFFIXES):
        raise OutputError("has an unsupported extension", path=path, fix="use .nii.gz, .nii, .nrrd or .mha")
    array = _storable(np.asarray(volume.array) if dtype is None else np.asarray(volume.array).astype(dtype), path)
    if name.endswith(DETACHED_SUFFIXES):
        _write_detached(Volume(array, volume.affine), path)
        return path
    with atomic_path(path) as tmp:
        if name.endswith(NIFTI_SUFFIXES):
            image = nib.Nifti1Image(array, volume.affine)
            image.set_sform(volume.affine, code=1)
            image.set_qform(volume.affine, code=1)
            image.header.set_xyzt_units("mm", "sec")
            _save_nifti(image, tmp, compress=name.endswith(".gz"))
        else:
            sitk.WriteImage(volume_to_sitk(Volume(array, volume.affine)), str(tmp), useCompression=True)
    return path


def _save_nifti(image: nib.Nifti1Image, tmp: Path, *, compress: bool) -> None:
    """``nib.save``, with its gzip stream written by ISA-L (``isal``) when installed.

    The same standard gzip at level 1, about 9x faster than zlib's (2.2 s instead of 19 s for a
    512x512x300 float32 volume on one core), streamed as nibabel writes. nibabel's opener for
    ``.gz`` is swapped only around this call, and the swapped-in one still reads with nibabel's.
    """
    try:
        from isal import igzip
    except ImportError:
        igzip = None
    if not compress or igzip is None:
        nib.save(image, str(tmp))
        return
    table = nib.openers.ImageOpener.compress_ext_map  # the opener nib.save uses (its own copy of the table)
    original = table[".gz"]

    def isal_open(filename, mode="rb", compresslevel=1, mtime=0, keep_open=False):
        if "w" not in mode:
            return original[0](filename, mode, compresslevel, mtime, keep_open)
        return igzip.open(filename, mode, compresslevel=min(int(compresslevel), 3))

    table[".gz"] = (isal_open, original[1])
    try:
        nib.save(image, str(tmp))
    finally:
        table[".gz"] = original


def _storable(array: np.ndarray, path: Path) -> np.ndarray:
    """The array in a voxel type every format stores: bool -> uint8, 64-bit ints -> int32, float16 -> float32."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    if array.dtype in (np.int64, np.uint64):
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        info = np.iinfo(np.int32)
        if lo < info.min or hi > info.max:
            raise OutputError(f"voxel values {lo}..{hi} do not fit a 32-bit integer image", path=path,
                              fix="pass dtype=numpy.float64 or rescale the values")
        return array.astype(np.int32)
    return array


def _write_detached(volume: Volume, path: Path) -> None:
    """Write a header + data file pair (.mhd/.nhdr) atomically.

    The pair is written under its final names into a temporary folder beside ``path`` (so the header
    names the right data file), then moved into place data file first, header last.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        sitk.WriteImage(volume_to_sitk(volume), str(tmp_dir / path.name), useCompression=True)
        produced = sorted(tmp_dir.iterdir(), key=lambda p: p.name == path.name)  # header last
        for item in produced:
            publish(item, path.parent / item.name)
    except OSError as exc:
        raise OutputError(f"could not be written ({exc.strerror or exc})", path=path,
                          fix="check free disk space and permissions") from exc
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
