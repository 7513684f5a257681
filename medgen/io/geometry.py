"""Geometry operations on :class:`Volume`: reorientation and resampling in world coordinates.

Everything here matches voxels through the RAS world frame, never array-to-array, so volumes
with different voxel orders (e.g. LPS DICOM vs LAS NIfTI of the same grid) line up correctly.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

from medgen.io.volume import Volume


def reorient(volume: Volume, codes: str = "RAS") -> Volume:
    """Permute/flip the array (no interpolation) so its axes point along ``codes``.

    Examples:
        >>> import numpy as np
        >>> v = Volume(np.arange(24.).reshape(2, 3, 4), np.diag([-1., -1., 1., 1.]))
        >>> reorient(v).orientation
        'RAS'
    """
    current = nib.orientations.io_orientation(volume.affine)
    target = nib.orientations.axcodes2ornt(tuple(codes))
    transform = nib.orientations.ornt_transform(current, target)
    array = nib.orientations.apply_orientation(volume.array, transform)
    affine = volume.affine @ nib.orientations.inv_ornt_aff(transform, volume.shape)
    return Volume(np.ascontiguousarray(array), affine, volume.source, volume.series_uid, dict(volume.meta))


def resample_to_grid(volume: Volume, affine: np.ndarray, shape: tuple[int, int, int], *, order: int = 1,
                     cval: float | None = None) -> Volume:
    """Resample onto another grid (``affine``, ``shape``) through world coordinates.

    Args:
        order: 1 (trilinear) for images, 0 (nearest neighbour) for label maps.
        cval: value outside the source field of view (default: the volume's minimum for images,
            0 for labels).
    """
    # target voxel -> world -> source voxel
    matrix = np.linalg.inv(volume.affine) @ affine
    if cval is None:
        cval = 0.0 if order == 0 else float(volume.array.min())
    if np.allclose(matrix, np.eye(4), atol=1e-6) and tuple(shape) == volume.shape:
        return Volume(volume.array.copy(), affine.copy(), volume.source, volume.series_uid, dict(volume.meta))
    source = volume.array if order == 0 else volume.array.astype(np.float32, copy=False)
    out = ndimage.affine_transform(source, matrix[:3, :3], offset=matrix[:3, 3], output_shape=tuple(shape),
                                   order=order, mode="constant", cval=cval, prefilter=False)
    return Volume(out.astype(volume.array.dtype, copy=False), np.asarray(affine, np.float64).copy(),
                  volume.source, volume.series_uid, dict(volume.meta))


def resample_like(volume: Volume, reference: Volume, *, order: int = 1, cval: float | None = None) -> Volume:
    """Resample ``volume`` onto ``reference``'s grid (shape and affine)."""
    return resample_to_grid(volume, reference.affine, reference.shape, order=order, cval=cval)


def grid_for_spacing(volume: Volume, spacing: tuple[float, float, float]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The grid covering ``volume``'s field of view at ``spacing``, with the same axes and centre."""
    old_spacing = np.asarray(volume.spacing)
    new_spacing = np.asarray(spacing, dtype=np.float64)
    extent = old_spacing * np.asarray(volume.shape)
    shape = tuple(int(max(1, round(e / s))) for e, s in zip(extent, new_spacing))
    directions = volume.affine[:3, :3] / old_spacing[None, :]
    affine = np.eye(4)
    affine[:3, :3] = directions * new_spacing[None, :]
    # keep the field-of-view centre fixed
    old_centre = volume.affine[:3, :3] @ ((np.asarray(volume.shape) - 1) / 2) + volume.affine[:3, 3]
    affine[:3, 3] = old_centre - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine, shape


def resample_to_spacing(volume: Volume, spacing: tuple[float, float, float], *, order: int = 1) -> Volume:
    """Resample to a new voxel spacing, keeping the field of view and axis directions."""
    if np.allclose(volume.spacing, spacing, rtol=1e-4):
        return volume
    affine, shape = grid_for_spacing(volume, spacing)
    return resample_to_grid(volume, affine, shape, order=order)
