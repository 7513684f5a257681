"""New anatomies from training label maps: smooth random deformations, scaling and pose changes.

:class:`LabelMapSampler` draws a label map from a bank (the training label maps an anatomy
generator was trained with, shipped inside its bundle), then warps it with one random transform
made of

* a pose change: a rotation about each axis and a translation,
* a scaling: one isotropic factor and a smaller independent factor per axis,
* a smooth deformation: a displacement field interpolated (cubic B-spline) from random
  displacements on a coarse control grid, scaled down if needed so that the mapping stays
  invertible (largest displacement gradient below :data:`MAX_DISPLACEMENT_GRADIENT`; a folding
  warp is what makes "confetti"),
* per-structure changes (``structure_shift_mm``, ``structure_scale``): every label gets its own
  random shift and scaling about its centroid, and these local affine moves are blended into one
  smooth field with Gaussian weights (a poly-affine transform). Organs then move and grow
  *relative to each other* -- the inter-patient variation that one global warp of the same few
  label maps cannot create. The blended field is capped like the smooth deformation, so it stays
  invertible and the neighbours of every organ stay its neighbours.

Why labels stay topologically sensible:

* the warp is smooth and invertible, so connected structures stay connected and neighbours stay
  neighbours;
* labels are warped as one-hot channels with linear interpolation and recombined by argmax
  (never nearest-neighbour on ids, never interpolation of ids), which gives smooth boundaries;
* a final clean-up (:func:`remove_small_islands`) reassigns, per label, connected components
  smaller than a fraction of that label's largest component to the surrounding label.

Everything is driven by a ``numpy.random.Generator``: the same seed gives the same map.

Examples:
    >>> import numpy as np
    >>> lab = np.zeros((24, 24, 12), np.uint8); lab[6:18, 6:18, 3:9] = 1; lab[9:13, 9:13, 4:8] = 2
    >>> sampler = LabelMapSampler([(lab, np.eye(4))])
    >>> out, affine = sampler.sample(np.random.default_rng(0))
    >>> out.shape, sorted(np.unique(out).tolist())
    ((24, 24, 12), [0, 1, 2])
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medgen.config import StrictModel

log = logging.getLogger(__name__)

__all__ = ["LabelSamplerConfig", "LabelMapSampler", "remove_small_islands", "structure_displacement", "warp_labels",
           "random_warp"]

#: Largest allowed spatial derivative of the displacement field (keeps the warp invertible).
MAX_DISPLACEMENT_GRADIENT = 0.5


class LabelSamplerConfig(StrictModel):
    """How strongly new anatomies differ from the bank's label maps.

    Attributes:
        rotation_deg: largest rotation about each axis (uniform in +-).
        scale: largest isotropic scaling (factor in ``1 +- scale``).
        axis_scale: largest extra scaling per axis (shape change).
        translation_mm: largest shift along each axis.
        elastic_mm: largest displacement of the smooth deformation.
        elastic_spacing_mm: control-point spacing of the deformation (its smoothness).
        min_island_fraction: per label, components smaller than this fraction of the label's
            largest component are reassigned to the surrounding label.
        min_island_voxels: components smaller than this are always reassigned.
        structure_shift_mm: largest shift of each label relative to the others (0: off).
        structure_scale: largest scaling of each label about its own centroid (factor in
            ``1 +- structure_scale``; 0: off).
        structure_blend_mm: width (Gaussian sigma) over which neighbouring labels' moves are
            blended; larger is smoother.
    """

    rotation_deg: float = 8.0
    scale: float = 0.06
    axis_scale: float = 0.04
    translation_mm: float = 6.0
    elastic_mm: float = 6.0
    elastic_spacing_mm: float = 40.0
    min_island_fraction: float = 0.05
    min_island_voxels: int = 8
    structure_shift_mm: float = 0.0
    structure_scale: float = 0.0
    structure_blend_mm: float = 12.0


def _rotation_matrix(angles_rad: Sequence[float]) -> np.ndarray:
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _smooth_displacement(rng: np.random.Generator, shape: tuple[int, int, int], spacing: np.ndarray,
                         amplitude_mm: float, control_mm: float) -> np.ndarray:
    """A smooth displacement field (3, *shape) in mm with largest gradient below the limit."""
    if amplitude_mm <= 0:
        return np.zeros((3, *shape), np.float32)
    extent = np.asarray(shape) * spacing
    grid = tuple(int(max(2, math.ceil(e / control_mm) + 1)) for e in extent)
    field = np.empty((3, *shape), np.float32)
    for axis in range(3):
        coarse = rng.uniform(-1.0, 1.0, size=grid)
        zoom = [s / g for s, g in zip(shape, grid)]
        field[axis] = ndimage.zoom(coarse, zoom, order=3, mode="nearest", grid_mode=True)[
            :shape[0], :shape[1], :shape[2]] * amplitude_mm
    return _cap_gradient(field, spacing)


def _cap_gradient(field: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Scale a displacement field (3, ...) in mm down until no derivative exceeds the limit.

    The largest derivative d(displacement mm)/d(position mm) must stay well below 1, else the
    mapping folds.
    """
    worst = 0.0
    for axis in range(3):
        for d in range(3):
            if field.shape[1 + d] > 1:
                worst = max(worst, float(np.abs(np.gradient(field[axis], spacing[d], axis=d)).max()))
    if worst > MAX_DISPLACEMENT_GRADIENT:
        field *= MAX_DISPLACEMENT_GRADIENT / worst
    return field


def structure_displacement(rng: np.random.Generator, labels: np.ndarray, spacing: np.ndarray,
                           config: LabelSamplerConfig) -> tuple[np.ndarray, int]:
    """Pull-back field (3, *coarse shape) in mm that moves and scales each label on its own.

    Label ``l`` with centroid ``c`` gets the forward move ``x -> c + k (x - c) + s`` (random
    ``k``, ``s``); a source point ``y`` inside it is therefore pulled from
    ``y - [(y - c)(1 - 1/k) + s/k]``. The per-label pulls are averaged with weights that are the
    labels' indicator maps smoothed by a Gaussian of ``structure_blend_mm`` (background pulls
    by 0), which gives one smooth field, capped like :func:`_smooth_displacement`.

    The field is computed on a grid subsampled by an integer ``stride`` (returned; a voxel of
    the coarse grid is at most half the blending width), so large maps with many labels stay cheap.
    """
    blend = max(float(config.structure_blend_mm), 1e-3)
    stride = max(1, int(blend / (2.0 * float(spacing.max()))))
    coarse = labels[::stride, ::stride, ::stride]
    coarse_spacing = spacing * stride
    sigma = blend / coarse_spacing
    points = np.indices(coarse.shape, dtype=np.float32) * coarse_spacing.reshape(3, 1, 1, 1).astype(np.float32)
    pull = np.zeros((3, *coarse.shape), np.float32)
    total = ndimage.gaussian_filter((coarse == 0).astype(np.float32), sigma, mode="nearest")
    ids = [int(v) for v in np.unique(labels) if v != 0]
    centroids = ndimage.center_of_mass(labels > 0, labels, ids)  # one pass over the map for all labels
    for value, centroid in zip(ids, centroids):
        weight = ndimage.gaussian_filter((coarse == value).astype(np.float32), sigma, mode="nearest")
        centre = np.asarray(centroid) * spacing
        k = 1.0 + rng.uniform(-config.structure_scale, config.structure_scale)
        shift = rng.uniform(-config.structure_shift_mm, config.structure_shift_mm, 3)
        own = (points - centre.reshape(3, 1, 1, 1)) * (1.0 - 1.0 / k) + (shift / k).reshape(3, 1, 1, 1)
        pull += weight * own.astype(np.float32)
        total += weight
    pull /= np.maximum(total, 1e-6)
    return _cap_gradient(pull, coarse_spacing), stride


def _apply_structure_moves(rng: np.random.Generator, labels: np.ndarray, affine: np.ndarray, coords: np.ndarray,
                           config: LabelSamplerConfig) -> np.ndarray:
    """Compose the source coordinates of a global warp with per-structure moves of the source map."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    pull, stride = structure_displacement(rng, labels, spacing, config)
    at = coords.reshape(3, -1) / stride
    moved = coords.reshape(3, -1).copy()
    for axis in range(3):
        moved[axis] -= ndimage.map_coordinates(pull[axis], at, order=1, mode="nearest") / spacing[axis]
    return moved.reshape(coords.shape)


def random_warp(rng: np.random.Generator, labels: np.ndarray, affine: np.ndarray,
                config: LabelSamplerConfig) -> np.ndarray:
    """Source voxel coordinates ``(3, *shape)`` for every output voxel of one random warp.

    The transform is centred on the foreground's centroid, so rotations and scalings move the
    anatomy about its own centre rather than the corner of the grid.
    """
    shape = labels.shape
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    fg = np.argwhere(labels > 0)
    centre = fg.mean(0) if len(fg) else (np.asarray(shape) - 1) / 2.0
    angles = np.deg2rad(rng.uniform(-config.rotation_deg, config.rotation_deg, 3))
    iso = 1.0 + rng.uniform(-config.scale, config.scale)
    per_axis = 1.0 + rng.uniform(-config.axis_scale, config.axis_scale, 3)
    shift = rng.uniform(-config.translation_mm, config.translation_mm, 3)
    # output point p (mm, about the centre) comes from source point R^T (p - shift) / scale
    matrix = _rotation_matrix(angles).T / (iso * per_axis)[:, None]
    displacement = _smooth_displacement(rng, shape, spacing, config.elastic_mm, config.elastic_spacing_mm)
    ijk = np.indices(shape, dtype=np.float32)
    points = (ijk - centre.reshape(3, 1, 1, 1).astype(np.float32)) * spacing.reshape(3, 1, 1, 1).astype(np.float32)
    points = points + displacement - shift.reshape(3, 1, 1, 1).astype(np.float32)
    src_mm = np.einsum("ij,j...->i...", matrix.astype(np.float32), points)
    return src_mm / spacing.reshape(3, 1, 1, 1).astype(np.float32) + centre.reshape(3, 1, 1, 1).astype(np.float32)


def warp_labels(labels: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Pull ``labels`` through source coordinates by linear interpolation of one-hot channels + argmax.

    Only voxels whose source position falls near a label's bounding box are interpolated for
    that label, so brains with ~50 labels warp in seconds.
    """
    shape = coords.shape[1:]
    best = np.full(shape, -1.0, np.float32)
    out = np.zeros(shape, labels.dtype)
    flat = coords.reshape(3, -1)
    for value in np.unique(np.concatenate([[0], np.unique(labels)])):
        mask = labels == value
        if value == 0:  # background competes like any label and owns everything outside the field
            prob = ndimage.map_coordinates(mask.astype(np.float32), flat, order=1, mode="constant", cval=1.0)
            win = prob > best.reshape(-1)
            best.reshape(-1)[win] = prob[win]
            out.reshape(-1)[win] = 0
            continue
        box = ndimage.find_objects(mask.astype(np.uint8))[0]
        lo = np.array([s.start for s in box]) - 1
        hi = np.array([s.stop for s in box])
        inside = np.all((flat >= lo[:, None]) & (flat <= hi[:, None]), axis=0)
        if not inside.any():
            continue
        sub = mask[tuple(slice(max(0, a), b + 1) for a, b in zip(lo, hi))].astype(np.float32)
        offset = np.maximum(lo, 0)
        local = flat[:, inside] - offset[:, None]
        prob = ndimage.map_coordinates(sub, local, order=1, mode="constant", cval=0.0)
        idx = np.flatnonzero(inside)
        win = prob > best.reshape(-1)[idx]
        best.reshape(-1)[idx[win]] = prob[win]
        out.reshape(-1)[idx[win]] = value
    return out


def remove_small_islands(labels: np.ndarray, *, min_fraction: float = 0.05, min_voxels: int = 8) -> np.ndarray:
    """Reassign small disconnected pieces of each label to the nearest remaining label.

    A component of label ``l`` (background included: small background pockets inside the body
    are holes) is removed when it is smaller than ``min_voxels`` or than
    ``min_fraction`` times ``l``'s largest component; its voxels take the label of the nearest
    voxel that was kept (background included). Components are 26-connected.
    """
    out = labels.copy()
    removed = np.zeros(labels.shape, bool)
    structure = np.ones((3, 3, 3), bool)
    for value in np.unique(labels):  # background too: small background pockets are holes
        comp, n = ndimage.label(labels == value, structure=structure)
        if n <= 1:
            continue
        sizes = np.bincount(comp.ravel())[1:]
        limit = max(min_voxels, min_fraction * sizes.max())
        small = np.flatnonzero(sizes < limit) + 1
        small = small[small != int(np.argmax(sizes)) + 1]  # a label never disappears entirely
        if small.size:
            removed |= np.isin(comp, small)
    if removed.any() and not removed.all():
        _, nearest = ndimage.distance_transform_edt(removed, return_distances=True, return_indices=True)
        out[removed] = labels[tuple(ix[removed] for ix in nearest)]
    return out


class LabelMapSampler:
    """Draws new label maps from a bank of training label maps.

    Args:
        bank: ``(labels, affine)`` pairs (integer arrays, any label ids).
        config: deformation strengths (:class:`LabelSamplerConfig`).
    """

    def __init__(self, bank: Sequence[tuple[np.ndarray, np.ndarray]], config: LabelSamplerConfig | None = None):
        if not bank:
            raise ValueError("the label-map bank is empty")
        self.bank = list(bank)
        self.config = config or LabelSamplerConfig()

    def sample(self, rng: np.random.Generator, index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One new label map and its affine (the source map's grid).

        Args:
            rng: the random stream (same state -> same map).
            index: which bank map to deform (default: drawn from ``rng``).
        """
        i = int(rng.integers(len(self.bank))) if index is None else int(index)
        labels, affine = self.bank[i]
        coords = random_warp(rng, labels, affine, self.config)
        if self.config.structure_shift_mm > 0 or self.config.structure_scale > 0:
            coords = _apply_structure_moves(rng, labels, affine, coords, self.config)
        warped = warp_labels(labels, coords)
        cleaned = remove_small_islands(warped, min_fraction=self.config.min_island_fraction,
                                       min_voxels=self.config.min_island_voxels)
        return cleaned, np.asarray(affine, np.float64).copy()
