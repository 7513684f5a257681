"""A frozen CT segmenter adapted to the translator's CT batches (for the shape-consistency term).

The shape term of :class:`medgen.objectives.cyclegan.CycleGANObjective` asks a frozen CT
segmenter S to segment G(F(ct)) like ct. S was trained on its own intensity scaling and layout;
this wrapper converts translator-space batches (CT window -> [-1, 1]; 2D ``(B, C, X, Y)`` or 3D
``(B, 1, X, Y, Z)``) into what S expects and returns logits in the batch's layout:

* intensities: translator unit -> HU -> S's ``[a_min, a_max] -> [b_min, b_max]`` scaling;
* a 2D segmenter gets each slice of a 2.5D stack as its own image;
* a 3D segmenter gets a 2.5D stack as a thin volume (slices as the last axis), replicate-padded
  to its size multiple and cropped back.

Voxel spacing is not adapted: for this term, use a segmenter trained at (about) the
translator's preprocessing spacing.

Examples:
    >>> import torch
    >>> seg = torch.nn.Conv2d(1, 3, 3, padding=1)
    >>> wrapped = TranslatorSpaceSegmenter(seg, segmenter_dims=2, ct_window=(-1000, 1000))
    >>> tuple(wrapped(torch.zeros(2, 3, 8, 8)).shape)   # 2.5D stack of 3 slices -> logits per slice
    (2, 3, 3, 8, 8)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medgen.transforms.intensity import unit_to_hu

__all__ = ["TranslatorSpaceSegmenter"]


class TranslatorSpaceSegmenter(nn.Module):
    """Wrap a frozen segmenter so it accepts translator-space CT batches.

    Args:
        network: the segmenter (frozen here: eval mode, no gradients into its weights).
        segmenter_dims: 2 or 3, the segmenter's spatial dimensions.
        ct_window: the translator's HU window (its [-1, 1] range).
        hu_range: ``(a_min, a_max)`` HU mapped to ``out_range`` for the segmenter.
        size_multiple: spatial sizes the segmenter needs to be divisible by.

    Returns (forward):
        logits ``(B, K, X, Y)`` for 2D input, ``(B, K, C, X, Y)`` for 2.5D stacks with C slices
        (class axis first so ``cross_entropy`` works with ``(B, C, X, Y)`` targets), or
        ``(B, K, X, Y, Z)`` for 3D.
    """

    def __init__(self, network: nn.Module, *, segmenter_dims: int, ct_window: tuple[float, float],
                 hu_range: tuple[float, float] = (-1000.0, 1000.0), out_range: tuple[float, float] = (-1.0, 1.0),
                 clip: bool = True, size_multiple: int = 1):
        super().__init__()
        self.network = network.eval()
        for p in self.network.parameters():
            p.requires_grad_(False)
        self.segmenter_dims = segmenter_dims
        self.ct_window = tuple(float(w) for w in ct_window)
        self.hu_range = tuple(float(v) for v in hu_range)
        self.out_range = tuple(float(v) for v in out_range)
        self.clip = clip
        self.size_multiple = int(size_multiple)

    @classmethod
    def from_bundle(cls, spec, *, ct_window, spatial_dims: int) -> "TranslatorSpaceSegmenter":
        """From a medgen ``segmenter`` bundle spec (``load_bundle(path, kind="segmenter")``)."""
        kwargs = spec.network.get("kwargs", {})
        dims = int(kwargs.get("spatial_dims", 3))
        strides = kwargs.get("strides")
        multiple = math.prod(int(s) for s in strides) if strides else 8
        inp = spec.extra.get("input", {})
        return cls(spec.build(), segmenter_dims=dims, ct_window=ct_window,
                   hu_range=(inp.get("a_min", -1000.0), inp.get("a_max", 1000.0)),
                   out_range=(inp.get("b_min", -1.0), inp.get("b_max", 1.0)), clip=bool(inp.get("clip", True)),
                   size_multiple=multiple)

    def train(self, mode: bool = True):  # always frozen
        super().train(False)
        return self

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        hu = unit_to_hu(x.float(), self.ct_window)
        a, b = self.hu_range
        c, d = self.out_range
        y = (hu - a) / (b - a) * (d - c) + c
        return y.clamp(min(c, d), max(c, d)) if self.clip else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._scale(x)
        if x.ndim == 5:  # 3D patches
            return self._run(x)
        b, c, h, w = x.shape
        if self.segmenter_dims == 2:
            logits = self._run(x.reshape(b * c, 1, h, w))
            out = logits.reshape(b, c, logits.shape[1], h, w).transpose(1, 2)
            return out if c > 1 else out[:, :, 0]
        vol = x.permute(0, 2, 3, 1).unsqueeze(1)  # (B, 1, X, Y, slices)
        logits = self._run(vol)
        out = logits.permute(0, 1, 4, 2, 3)  # (B, K, slices, X, Y)
        return out if c > 1 else out[:, :, 0]

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        sizes = x.shape[2:]
        pads = []
        for s in reversed(sizes):
            extra = (-s) % self.size_multiple
            pads += [extra // 2, extra - extra // 2]
        if any(pads):
            x = F.pad(x, pads, mode="replicate")
        # fp32 even under bf16 autocast: the frozen segmenter is a loss network, and run in bf16 it turned the
        # CycleGAN translator's loss NaN within a few steps (the full demo on a CPU with bf16 instructions)
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = self.network(x.float())
        out = out[0] if isinstance(out, (list, tuple)) else out
        if any(pads):
            index = [slice(None), slice(None)]
            for d in range(len(sizes)):
                lo = pads[2 * (len(sizes) - 1 - d)]
                index.append(slice(lo, lo + sizes[d]))
            out = out[tuple(index)]
        return out
