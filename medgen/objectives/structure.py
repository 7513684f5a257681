"""Structure-preservation losses between an image and its translation (modality independent).

An unpaired translator can satisfy the cycle and adversarial losses while moving or inventing
anatomy (the cycle only asks that the change is invertible). These terms tie the synthetic CT's
*structure* to the MR it came from without assuming how intensities map:

* :class:`MINDLoss` -- MIND descriptors (Heinrich et al., Med Image Anal 2012): for each voxel,
  the patch distances to its neighbours, normalised by their local variance and passed through
  ``exp(-d/v)``. Edges look alike in both modalities whatever their polarity; the loss is the
  mean absolute difference of the descriptors.
* :class:`GradientCorrelationLoss` -- ``1 - |NCC|`` of the spatial gradients along each axis
  (polarity-free because bone is bright on CT and dark on MR).

Both work on 2D ``(B, C, H, W)`` (channels, e.g. 2.5D slices, are handled independently) and 3D
``(B, C, D, H, W)`` tensors.

Examples:
    >>> import torch
    >>> x = torch.rand(2, 1, 16, 16)
    >>> round(MINDLoss()(x, x).item(), 6), round(GradientCorrelationLoss()(x, -x).item(), 6)
    (0.0, 0.0)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MINDLoss", "GradientCorrelationLoss", "build_structure_loss"]


def _as_single_channel(x: torch.Tensor) -> torch.Tensor:
    """(B, C, ...) -> (B*C, 1, ...): channels are separate images (2.5D slices)."""
    return x.reshape(x.shape[0] * x.shape[1], 1, *x.shape[2:])


def _shift(x: torch.Tensor, axis: int, offset: int) -> torch.Tensor:
    """``x`` moved by ``offset`` voxels along spatial ``axis`` with replicate padding."""
    dims = x.ndim - 2
    pad = [0, 0] * dims
    # F.pad lists pads from the last axis backwards
    slot = 2 * (dims - 1 - axis)
    pad[slot + (0 if offset > 0 else 1)] = abs(offset)
    padded = F.pad(x, pad, mode="replicate")
    index = [slice(None)] * x.ndim
    size = x.shape[2 + axis]
    index[2 + axis] = slice(0, size) if offset > 0 else slice(abs(offset), abs(offset) + size)
    return padded[tuple(index)]


def mind_descriptor(x: torch.Tensor, *, radius: int = 1, dilation: int = 2, eps: float = 1e-4) -> torch.Tensor:
    """MIND descriptor with the six (3D) / four (2D) axis neighbours at distance ``dilation``.

    Args:
        x: (N, 1, ...) images.
        radius: half-size of the box patch used for patch distances.
        dilation: neighbour distance in voxels.

    Returns:
        (N, 2*dims, ...) descriptors in (0, 1], normalised so the maximum over neighbours is 1.
    """
    dims = x.ndim - 2
    pool = F.avg_pool2d if dims == 2 else F.avg_pool3d
    k = 2 * radius + 1
    distances = []
    for axis in range(dims):
        for offset in (dilation, -dilation):
            diff = (x - _shift(x, axis, offset)) ** 2
            distances.append(pool(diff, k, stride=1, padding=radius, count_include_pad=False))
    d = torch.cat(distances, 1)
    variance = d.mean(1, keepdim=True)
    # keep the variance away from zero and from extremes (Heinrich's robust clamp)
    mean_var = variance.mean(dim=tuple(range(1, variance.ndim)), keepdim=True)
    variance = variance.clamp(min=mean_var * 1e-3 + eps, max=mean_var * 1e3 + eps)
    descriptor = torch.exp(-d / variance)
    return descriptor / descriptor.amax(1, keepdim=True).clamp_min(eps)


class MINDLoss(nn.Module):
    """Mean |MIND(a) - MIND(b)|: zero when both images have the same local structure.

    Args:
        radius: patch half-size for the descriptor; dilation: neighbour distance (voxels).
    """

    def __init__(self, *, radius: int = 1, dilation: int = 2):
        super().__init__()
        self.radius = radius
        self.dilation = dilation

    def forward(self, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        a, b = _as_single_channel(a.float()), _as_single_channel(b.float())
        diff = (mind_descriptor(a, radius=self.radius, dilation=self.dilation)
                - mind_descriptor(b, radius=self.radius, dilation=self.dilation)).abs()
        if mask is not None:
            m = _as_single_channel(mask.float()).expand_as(diff)
            return (diff * m).sum() / m.sum().clamp_min(1.0)
        return diff.mean()


class GradientCorrelationLoss(nn.Module):
    """``1 - mean_axes |NCC(grad_axis a, grad_axis b)|`` per image, averaged over the batch."""

    def __init__(self, *, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        a, b = _as_single_channel(a.float()), _as_single_channel(b.float())
        dims = a.ndim - 2
        m = None if mask is None else _as_single_channel(mask.float())
        scores = []
        for axis in range(dims):
            ga = torch.diff(a, dim=2 + axis)
            gb = torch.diff(b, dim=2 + axis)
            w = torch.ones_like(ga) if m is None else torch.narrow(m, 2 + axis, 0, ga.shape[2 + axis])
            flat = tuple(range(1, ga.ndim))
            n = w.sum(flat).clamp_min(1.0)
            ga = ga - (ga * w).sum(flat, keepdim=True) / n.view(-1, *[1] * (ga.ndim - 1))
            gb = gb - (gb * w).sum(flat, keepdim=True) / n.view(-1, *[1] * (gb.ndim - 1))
            cov = (ga * gb * w).sum(flat)
            ncc = cov / ((ga * ga * w).sum(flat).sqrt() * (gb * gb * w).sum(flat).sqrt() + self.eps)
            scores.append(ncc.abs())
        return 1.0 - torch.stack(scores, 0).mean()


def build_structure_loss(kind: str | None) -> nn.Module | None:
    """``mind``, ``gradient_correlation`` or ``none``/None."""
    if kind in (None, "none"):
        return None
    if kind == "mind":
        return MINDLoss()
    if kind in ("gradient_correlation", "gc"):
        return GradientCorrelationLoss()
    raise ValueError(f"unknown structure loss '{kind}'; use mind, gradient_correlation or none")
