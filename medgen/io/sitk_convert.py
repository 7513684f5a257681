"""Conversion between SimpleITK images (LPS, (z, y, x) arrays) and :class:`Volume` (RAS, (i, j, k))."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from medgen.io.volume import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def sitk_affine_ras(image: sitk.Image) -> np.ndarray:
    """The voxel-to-RAS affine of a 3D SimpleITK image (ITK stores LPS direction cosines)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * spacing[None, :]
    affine_lps[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ affine_lps


def volume_from_sitk(image: sitk.Image, **fields) -> Volume:
    """Wrap a 3D SimpleITK image as a :class:`Volume` (array transposed to (i, j, k))."""
    array = sitk.GetArrayFromImage(image)  # (k, j, i)
    return Volume(np.ascontiguousarray(array.transpose(2, 1, 0)), sitk_affine_ras(image), **fields)


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """A SimpleITK image with exactly the volume's voxels and geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array.transpose(2, 1, 0)))
    affine_lps = LPS_TO_RAS @ volume.affine
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(d) for d in (affine_lps[:3, :3] / spacing[None, :]).ravel()))
    image.SetOrigin(tuple(float(o) for o in affine_lps[:3, 3]))
    return image
