"""Asymmetric test volumes in several orientations, for geometry tests anywhere in medgen.

Every voxel of the image has a different value and the label map has blobs of different sizes
at different places, so any flip, axis swap or off-by-one between a written and a read volume
(or between an input and a mask mapped back onto it) changes the values and is caught.

Examples:
    >>> image, label = asymmetric_phantom("oblique")
    >>> image.shape, label.orientation == image.orientation, int(label.array.max())
    ((12, 14, 10), True, 4)
"""

from __future__ import annotations

import numpy as np

from medgen.io.volume import Volume


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx (angles in degrees)."""
    ax, ay, az = np.deg2rad([rx, ry, rz])
    rot_x = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rot_y = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rot_z = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


#: RAS direction of array axes (i, j, k) as matrix columns, for common acquisition planes.
#: ``axial_lps``, ``sagittal`` and ``coronal`` are the usual DICOM layouts (rows along patient
#: left/posterior/down); ``oblique`` is a rotated grid that matches no anatomical axis.
ORIENTATIONS: dict[str, np.ndarray] = {
    "axial_ras": np.eye(3),
    "axial_lps": np.column_stack([(-1, 0, 0), (0, -1, 0), (0, 0, 1)]).astype(float),
    "sagittal": np.column_stack([(0, -1, 0), (0, 0, -1), (1, 0, 0)]).astype(float),
    "coronal": np.column_stack([(-1, 0, 0), (0, 0, -1), (0, -1, 0)]).astype(float),
    "oblique": _rotation(15.0, -20.0, 30.0),
}


def phantom_affine(orientation: str = "axial_lps", *, spacing=(0.8, 0.9, 2.0), origin=(-35.5, 20.25, -101.0),
                   negate_slices: bool = False) -> np.ndarray:
    """A voxel-to-RAS affine with the given axis directions, spacing and origin.

    Args:
        orientation: a key of :data:`ORIENTATIONS`.
        spacing: voxel size along (i, j, k) in mm.
        origin: world position of voxel (0, 0, 0).
        negate_slices: point the third axis the other way (slices ordered against the plane
            normal, as in series stored from head to feet).
    """
    directions = ORIENTATIONS[orientation].copy()
    if negate_slices:
        directions[:, 2] *= -1
    affine = np.eye(4)
    affine[:3, :3] = directions * np.asarray(spacing, float)[None, :]
    affine[:3, 3] = origin
    return affine


def asymmetric_phantom(orientation: str = "axial_lps", *, shape=(12, 14, 10), spacing=(0.8, 0.9, 2.0),
                       origin=(-35.5, 20.25, -101.0), negate_slices: bool = False) -> tuple[Volume, Volume]:
    """An image with a unique integer value per voxel and a 4-blob label map on the same grid.

    The image values are whole numbers in about -4000..5700 (so they survive int16 DICOM storage
    exactly); the labels are 1..4 at distinct, asymmetric places (label 4 is a single voxel).

    Returns:
        (image, label) volumes sharing one affine.
    """
    shape = tuple(int(s) for s in shape)
    affine = phantom_affine(orientation, spacing=spacing, origin=origin, negate_slices=negate_slices)
    i, j, k = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    label = np.zeros(shape, np.uint8)
    ni, nj, nk = shape
    label[1:ni // 3, 1:nj // 4 + 1, 0:nk // 3] = 1
    label[ni // 2:ni - 1, nj // 3:nj // 2 + 1, 1:nk // 2] = 2
    label[ni // 4:ni // 2, nj - 4:nj - 1, nk // 2 + 1:nk - 1] = 3
    label[ni - 2, 1, nk - 2] = 4
    unique = i + ni * j + ni * nj * k
    image = (unique + 1000 * label.astype(np.int64) - 4000).astype(np.float32)
    return Volume(image, affine.copy()), Volume(label, affine.copy())
