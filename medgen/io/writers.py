"""Write volumes with their exact geometry, atomically, never over an input."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medgen.errors import OutputError
from medgen.io.atomic import atomic_path, check_output_path
from medgen.io.readers import NIFTI_SUFFIXES, SITK_SUFFIXES
from medgen.io.sitk_convert import volume_to_sitk
from medgen.io.volume import Volume


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
    path = check_output_path(path, overwrite=overwrite, inputs=inputs + (volume.source,))
    array = volume.array if dtype is None else volume.array.astype(dtype)
    name = path.name.lower()
    with atomic_path(path) as tmp:
        if name.endswith(NIFTI_SUFFIXES):
            image = nib.Nifti1Image(array, volume.affine)
            image.set_sform(volume.affine, code=1)
            image.set_qform(volume.affine, code=1)
            image.header.set_xyzt_units("mm", "sec")
            nib.save(image, str(tmp))
        elif name.endswith(SITK_SUFFIXES):
            sitk.WriteImage(volume_to_sitk(Volume(array, volume.affine)), str(tmp), useCompression=True)
        else:
            raise OutputError("has an unsupported extension", path=path,
                              fix="use .nii.gz, .nii, .nrrd or .mha")
    return path
