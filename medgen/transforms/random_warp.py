"""Random spatial warps of label-like patches in torch: rotation, scaling, smooth deformation.

Used on the fly while training on renderings (:mod:`medgen.transforms.render`): the class map
and the training label are warped by the *same* sampling grid with nearest-neighbour lookup, so
the label stays exactly the warped label (no interpolated ids) and the rendering is made from
the warped anatomy. The deformation is a coarse random displacement grid, upsampled linearly
(smooth), added to a random affine (rotation about each axis, one isotropic and a smaller
per-axis scaling). Everything is drawn from one ``torch.Generator``, so it is seeded and
checkpointed with the training task.

Examples:
    >>> import torch
    >>> lab = torch.zeros(1, 1, 16, 16, 8); lab[..., 4:12, 4:12, 2:6] = 1
    >>> g = torch.Generator().manual_seed(0)
    >>> grid = random_grid(tuple(lab.shape[2:]), g, WarpRanges())
    >>> out = warp_nearest(lab, grid)
    >>> out.shape, sorted(out.unique().tolist())
    (torch.Size([1, 1, 16, 16, 8]), [0.0, 1.0])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["WarpRanges", "random_grid", "warp_nearest", "identity_grid"]


@dataclass(frozen=True)
class WarpRanges:
    """Ranges of a random warp.

    Attributes:
        rotate_deg: largest rotation about each axis (degrees, uniform in +-).
        scale: isotropic scaling range.
        axis_scale: extra independent per-axis scaling (uniform in 1 +- axis_scale).
        elastic_vox: std of the coarse random displacements, in voxels.
        control_points: control points per axis of the displacement grid.
    """

    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    axis_scale: float = 0.05
    elastic_vox: float = 2.0
    control_points: int = 4


def identity_grid(shape: tuple[int, int, int]) -> torch.Tensor:
    """The ``grid_sample`` grid (1, X, Y, Z, 3) that reproduces an array of ``shape`` exactly."""
    theta = torch.zeros(1, 3, 4)
    theta[0, :, :3] = torch.eye(3)
    return _affine_grid(theta, shape)


def _affine_grid(theta: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    # grid_sample on a (N, C, X, Y, Z) tensor reads grid[..., 0] along Z, [..., 1] along Y,
    # [..., 2] along X; theta is written in (x, y, z) order, so reverse its axes for the grid.
    flip = torch.eye(3)[[2, 1, 0]]
    t = theta.clone()
    t[0, :, :3] = flip @ theta[0, :, :3] @ flip
    t[0, :, 3] = flip @ theta[0, :, 3]
    return F.affine_grid(t, [1, 1, *shape], align_corners=False)


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    out = torch.eye(3)
    for axis, a in enumerate(angles.tolist()):
        c, s = math.cos(a), math.sin(a)
        i, j = [k for k in range(3) if k != axis]
        r = torch.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = r @ out
    return out


def random_grid(shape: tuple[int, int, int], gen: torch.Generator, ranges: WarpRanges) -> torch.Tensor:
    """A random sampling grid (1, X, Y, Z, 3) for ``grid_sample`` (normalised coordinates)."""
    def uniform(n, lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    angles = uniform(3, -1.0, 1.0) * math.radians(ranges.rotate_deg)
    iso = float(uniform((), *ranges.scale))
    per_axis = 1.0 + uniform(3, -1.0, 1.0) * ranges.axis_scale
    theta = torch.zeros(1, 3, 4)
    theta[0, :, :3] = _rotation(angles) @ torch.diag(1.0 / (iso * per_axis))
    grid = _affine_grid(theta, shape)
    if ranges.elastic_vox > 0:
        n = ranges.control_points
        coarse = torch.randn((1, 3, n, n, n), generator=gen) * ranges.elastic_vox
        disp = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)  # voxels, (x, y, z)
        norm = torch.tensor([2.0 / max(s, 1) for s in shape]).view(1, 3, 1, 1, 1)
        disp = (disp * norm).permute(0, 2, 3, 4, 1)[..., [2, 1, 0]]  # to grid order (z, y, x)
        grid = grid + disp
    return grid


def warp_nearest(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``volume`` (N, C, X, Y, Z) resampled on ``grid`` with nearest neighbour, edges replicated."""
    out = F.grid_sample(volume.float(), grid.expand(volume.shape[0], *grid.shape[1:]), mode="nearest",
                        padding_mode="border", align_corners=False)
    return out.to(volume.dtype)
