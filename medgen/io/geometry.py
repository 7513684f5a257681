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

    Each source voxel covers +-half a voxel around its centre: target voxels whose centre falls
    inside that box get a value (nearest neighbour, or trilinear clamped at the edge), the rest get
    ``cval``. Grids that coincide up to a permutation/flip of axes (e.g. LPS DICOM vs LAS NIfTI
    of the same scan) are matched exactly, whatever the floating-point noise in the affines.

    Args:
        order: 1 (trilinear) for images, 0 (nearest neighbour) for label maps.
        cval: value outside the source field of view (default: the volume's minimum for images,
            0 for labels).

    Examples:
        >>> import numpy as np
        >>> v = Volume(np.arange(8.).reshape(2, 2, 2), np.diag([1., 1., 1., 1.]))
        >>> flipped = np.diag([-1., 1., 1., 1.]); flipped[0, 3] = 1.0
        >>> resample_to_grid(v, flipped, (2, 2, 2), order=0).array[:, 0, 0].tolist()
        [4.0, 0.0]
    """
    # target voxel -> world -> source voxel
    matrix = np.linalg.inv(volume.affine) @ np.asarray(affine, np.float64)
    if np.allclose(matrix, np.round(matrix), atol=1e-6):
        matrix = np.round(matrix)  # same lattice: remove float noise so nothing falls off an edge
    if cval is None:
        cval = 0.0 if order == 0 else float(volume.array.min())
    if np.array_equal(matrix, np.eye(4)) and tuple(shape) == volume.shape:
        return Volume(volume.array.copy(), np.asarray(affine, np.float64).copy(), volume.source,
                      volume.series_uid, dict(volume.meta))
    reindexed = _reindex(volume.array, matrix, tuple(int(s) for s in shape))
    if reindexed is not None:  # same lattice, axes permuted/flipped: exact and fast, any order
        return Volume(reindexed, np.asarray(affine, np.float64).copy(), volume.source, volume.series_uid,
                      dict(volume.meta))
    separable = _separable(volume.array, matrix, tuple(int(s) for s in shape), order, cval)
    if separable is not None:  # axis-aligned grids (the common case): same values, several times faster
        return Volume(separable.astype(volume.array.dtype, copy=False), np.asarray(affine, np.float64).copy(),
                      volume.source, volume.series_uid, dict(volume.meta))
    kwargs = dict(offset=matrix[:3, 3], output_shape=tuple(int(s) for s in shape), prefilter=False)
    if order == 0:
        out = ndimage.affine_transform(volume.array, matrix[:3, :3], order=0, mode="grid-constant", cval=cval,
                                       **kwargs)
    else:
        source = volume.array.astype(np.float32, copy=False)
        out = ndimage.affine_transform(source, matrix[:3, :3], order=order, mode="nearest", **kwargs)
        inside = ndimage.affine_transform(np.ones(volume.shape, np.uint8), matrix[:3, :3], order=0,
                                          mode="grid-constant", cval=0, **kwargs)
        out[inside == 0] = cval
    return Volume(out.astype(volume.array.dtype, copy=False), np.asarray(affine, np.float64).copy(),
                  volume.source, volume.series_uid, dict(volume.meta))


def _reindex(array: np.ndarray, matrix: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray | None:
    """``array`` re-indexed onto the target grid when ``matrix`` (target voxel -> source voxel) is a
    signed axis permutation with whole-voxel offsets and the target lies inside the source; else None."""
    linear, offset = matrix[:3, :3], matrix[:3, 3]
    if not (np.array_equal(np.abs(linear).sum(axis=0), np.ones(3)) and np.array_equal(np.abs(linear).sum(axis=1),
                                                                                     np.ones(3))):
        return None
    if not np.array_equal(offset, np.round(offset)):
        return None
    perm, index = [], []
    for axis in range(3):  # target axis -> source axis, direction and start
        src = int(np.flatnonzero(linear[:, axis])[0])
        step, start = int(linear[src, axis]), int(offset[src])
        stop = start + step * (shape[axis] - 1)
        if min(start, stop) < 0 or max(start, stop) > array.shape[src] - 1:
            return None
        perm.append(src)
        index.append(slice(start, None if stop + step < 0 else stop + step, step))
    return np.ascontiguousarray(array.transpose(perm)[tuple(index)])


def _separable(array: np.ndarray, matrix: np.ndarray, shape: tuple[int, int, int], order: int,
               cval: float) -> np.ndarray | None:
    """:func:`resample_to_grid` for a diagonal ``matrix`` (target axes parallel to the source's).

    Then trilinear interpolation is a product of three 1D ones and nearest neighbour a pick of
    whole rows, so the work is done one axis at a time (several times faster than
    ``ndimage.affine_transform``). Same conventions as that path: coordinates in float64, nearest
    neighbour rounds ``floor(c + 0.5)``, trilinear clamps at the edges and is computed in float64
    (slabs of the output at a time, to bound memory) before the cast, target voxels whose rounded
    coordinate leaves the source get ``cval``. Nearest neighbour is exact; trilinear matches to
    the last float32 bit in nearly every voxel, and is used only when the target has more voxels
    than the source (measured: for down-sampling the affine path is as fast). None otherwise.
    """
    linear = matrix[:3, :3]
    if order not in (0, 1) or np.any(linear[~np.eye(3, dtype=bool)] != 0) or np.any(np.diag(linear) == 0):
        return None
    if order == 1 and int(np.prod(shape)) <= array.size:
        return None
    coords = [matrix[a, a] * np.arange(shape[a], dtype=np.float64) + matrix[a, 3] for a in range(3)]
    nearest = [np.floor(c + 0.5).astype(np.int64) for c in coords]
    valid = [(n >= 0) & (n <= array.shape[a] - 1) for a, n in enumerate(nearest)]
    if order == 0:
        out = array[np.ix_(*[np.clip(n, 0, array.shape[a] - 1) for a, n in enumerate(nearest)])]
    else:
        taps = []
        for a in range(3):
            c = np.clip(coords[a], 0, array.shape[a] - 1)
            lo = np.minimum(np.floor(c).astype(np.int64), array.shape[a] - 1)
            taps.append((lo, np.minimum(lo + 1, array.shape[a] - 1), c - lo))
        out = np.empty(shape, np.float32)
        step = max(1, 2**22 // max(1, shape[1] * shape[2]))  # ~32 MB of float64 per slab
        for s0 in range(0, shape[0], step):
            block = array
            for a in range(3):
                lo, hi, w = taps[a]
                if a == 0:
                    lo, hi, w = lo[s0:s0 + step], hi[s0:s0 + step], w[s0:s0 + step]
                view = [1, 1, 1]
                view[a] = -1
                low = np.take(block, lo, axis=a).astype(np.float64, copy=False)
                block = low + (np.take(block, hi, axis=a) - low) * w.reshape(view)
            out[s0:s0 + step] = block
    if not all(v.all() for v in valid):
        out = np.array(out, copy=True) if order == 0 else out
        inside = valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :]
        out[~inside] = cval
    return out


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
