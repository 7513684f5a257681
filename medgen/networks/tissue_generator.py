"""A translator generator that decides *which tissue* each voxel is, then paints its HU.

Why: trained on random-contrast renderings, a plain image-to-image generator (L1 in HU) has to
recognise a tissue from its shape alone, because an intensity says nothing about the tissue
there. Where it cannot, L1 drives it to the conditional *median* HU, which is soft tissue: bone,
gas and vessels fade (measured in docs/results.md, "Synthesis-supervised chain"). A segmenter
trained on the same renderings does learn those shapes. This generator is that segmenter with an
HU head: a U-Net (MONAI ``UNet``) gives per-voxel logits over the rendering's classes (organ
labels and HU tissue bands, :func:`medgen.transforms.render.render_classes`), and the synthetic
CT is the probability-weighted sum of one fixed value per class,

    sCT(x) = sum_k softmax(logits(x))_k * value_k      (CT window unit range, clipped to [-1, 1])

This is bulk-density assignment, the classic MR-only radiotherapy synthetic CT, made soft (the
partial-volume mix at edges). The U-Net is a contrast-agnostic segmenter trained with
``synth.target: classes`` (:mod:`medgen.models.tissue_translator` copies its weights in); the
values are each class's mean HU over that segmenter's training CTs
(:meth:`TissueGenerator.set_class_values`), a buffer in the state dict, so a translator bundle
carries them. (Training this network as a translator instead, class term + L1, learnt the
decisions far worse than the segmenter recipe does: docs/results.md, "Tissue-painting
translator".) Texture inside a tissue is not reproduced (each class is one value): the output is
meant for CT segmenters and dose-like HU lookups, not for realism.

Layout as :class:`medgen.networks.resnet_generator.ResnetGenerator`: ``spatial_dims=3`` with
one channel, or 2D/2.5D with ``in_channels = out_channels = k`` slices. Any input size works
(padded internally to ``size_multiple`` with the lowest input value and cropped back).

Examples:
    >>> import torch
    >>> net = TissueGenerator(spatial_dims=3, in_channels=1, out_channels=1, n_classes=4,
    ...                       channels=[4, 8], strides=[2])
    >>> net.set_class_values(torch.tensor([-1.0, -0.2, 0.1, 0.6]))
    >>> y, logits = net(torch.zeros(1, 1, 10, 12, 6), return_logits=True)
    >>> tuple(y.shape), tuple(logits.shape), bool(y.abs().max() <= 1)
    ((1, 1, 10, 12, 6), (1, 1, 4, 10, 12, 6), True)
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TissueGenerator", "TISSUE_GENERATOR_NAME"]

TISSUE_GENERATOR_NAME = "medgen.networks.tissue_generator:TissueGenerator"


class TissueGenerator(nn.Module):
    """U-Net class logits -> per-class HU values -> synthetic CT in [-1, 1].

    Args:
        spatial_dims: 2 (slices or 2.5D stacks as channels) or 3.
        in_channels, out_channels: equal (the slices of a 2.5D stack), 1 in 3D.
        n_classes: number of render classes (largest class id + 1).
        channels, strides: the U-Net's widths per level and down-sampling strides.
        num_res_units: residual units per U-Net block.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, n_classes: int,
                 channels: Sequence[int] = (16, 32, 64, 128), strides: Sequence[int] = (2, 2, 2),
                 num_res_units: int = 1):
        super().__init__()
        from monai.networks.nets import UNet

        if in_channels != out_channels:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be equal")
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        if len(channels) != len(strides) + 1:
            raise ValueError(f"channels ({len(channels)}) needs one more entry than strides ({len(strides)})")
        self.spatial_dims, self.out_channels, self.n_classes = int(spatial_dims), int(out_channels), int(n_classes)
        self.unet = UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels * n_classes,
                         channels=list(channels), strides=list(strides), num_res_units=num_res_units)
        self.register_buffer("class_values", torch.zeros(n_classes))
        self._size_multiple = int(math.prod(int(s) for s in strides))

    @property
    def size_multiple(self) -> int:
        """Spatial sizes the U-Net itself needs (the forward pads to it)."""
        return self._size_multiple

    @torch.no_grad()
    def set_class_values(self, values: torch.Tensor) -> None:
        """Paint each class with this value (unit range; the class's mean CT value in training)."""
        values = torch.as_tensor(values, dtype=self.class_values.dtype).reshape(-1)
        if values.numel() != self.n_classes:
            raise ValueError(f"{values.numel()} class values for {self.n_classes} classes")
        self.class_values.copy_(values.clamp(-1, 1))

    def forward(self, x: torch.Tensor, return_logits: bool = False):
        """The synthetic CT (B, C, *spatial); with ``return_logits`` also the logits (B, C, K, *spatial)."""
        spatial = x.shape[2:]
        pads: list[int] = []
        for size in reversed(spatial):
            pads += [0, (-size) % self._size_multiple]
        padded = F.pad(x, pads, value=float(x.min())) if any(pads) else x
        logits = self.unet(padded)
        logits = logits[(..., *(slice(0, s) for s in spatial))]
        logits = logits.reshape(x.shape[0], self.out_channels, self.n_classes, *spatial)
        probs = torch.softmax(logits.float(), dim=2)
        shape = (1, 1, self.n_classes) + (1,) * len(spatial)
        sct = (probs * self.class_values.float().view(shape)).sum(dim=2).clamp(-1, 1)
        return (sct, logits) if return_logits else sct
