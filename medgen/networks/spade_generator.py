"""Label-conditioned image generator with SPADE normalisation (2D, 2.5D and 3D).

Paper-to-code map (Park et al., "Semantic Image Synthesis with Spatially-Adaptive
Normalization", 2019): ``m`` = the one-hot label map, ``z`` = the noise input, ``G(m, z)`` =
:class:`SPADEGenerator`, SPADE = :class:`monai.networks.blocks.SPADE` (a parameter-free instance
norm whose scale and shift are predicted from ``m`` at every resolution).

How this network differs from MONAI's ``SPADENet`` and why:

* **Fully convolutional.** ``SPADENet`` decodes from a latent of a fixed input size; medical
  volumes come in every size, so this generator is a small U-Net whose decoder blocks are SPADE
  residual blocks. It is trained on patches and applied with a sliding window of the same size,
  so the instance-norm statistics at inference match training.
* **Label indices in, one-hot inside.** The input tensor holds the label map as channel indices
  (``0..num_labels-1``, float) followed by noise channels. Sliding-window inference therefore
  moves a handful of channels instead of a one-hot map with dozens of channels, and zero padding
  means "background".
* **A per-label intensity prior.** The output is ``mean[m] + residual(m, z)``: a 1x1 convolution
  of the one-hot map (one learned intensity per label, initialised from the training data's
  per-label means by :meth:`SPADEGenerator.init_label_means`) plus what the network adds
  (texture, partial volume, bias fields). Per-label intensities are right from the first step;
  the adversarial and feature terms then only have to learn appearance.
* **No transposed convolutions** (nearest upsampling + convolution): no checkerboard artifacts.

2.5D: ``spatial_dims=2`` with ``context_slices=k`` reads ``2k+1`` neighbouring label slices (as
index channels) and produces the centre slice.

Examples:
    >>> import torch
    >>> net = SPADEGenerator(spatial_dims=3, num_labels=4, channels=(4, 8), noise_channels=1, spade_hidden=4)
    >>> x = torch.cat([torch.randint(0, 4, (1, 1, 16, 16, 8)).float(), torch.randn(1, 1, 16, 16, 8)], 1)
    >>> net(x).shape
    torch.Size([1, 1, 16, 16, 8])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import SPADE
from torch import nn

__all__ = ["SPADEGenerator", "SPADEResBlock", "one_hot_labels"]


def _conv(spatial_dims: int):
    return nn.Conv3d if spatial_dims == 3 else nn.Conv2d


def one_hot_labels(index: torch.Tensor, num_labels: int) -> torch.Tensor:
    """One-hot encode a ``(B, 1, *S)`` float/int tensor of channel indices into ``(B, L, *S)``.

    Values are rounded and clamped into ``[0, num_labels-1]`` (interpolation or padding can
    leave fractions; out-of-range values never index out of bounds).
    """
    idx = index[:, 0].round().clamp(0, num_labels - 1).long()
    dims = idx.ndim - 1
    onehot = F.one_hot(idx, num_labels)  # (B, *S, L)
    return onehot.permute(0, dims + 1, *range(1, dims + 1)).to(index.dtype if index.is_floating_point() else torch.float32)


class SPADEResBlock(nn.Module):
    """Residual block: (SPADE -> LeakyReLU -> conv) x 2, with a 1x1 shortcut when widths differ."""

    def __init__(self, *, spatial_dims: int, in_channels: int, out_channels: int, label_nc: int, hidden: int):
        super().__init__()
        conv = _conv(spatial_dims)
        self.norm1 = SPADE(label_nc, in_channels, 3, spatial_dims, hidden, norm="INSTANCE")
        self.conv1 = conv(in_channels, out_channels, 3, padding=1)
        self.norm2 = SPADE(label_nc, out_channels, 3, spatial_dims, hidden, norm="INSTANCE")
        self.conv2 = conv(out_channels, out_channels, 3, padding=1)
        self.skip = conv(in_channels, out_channels, 1, bias=False) if in_channels != out_channels else nn.Identity()
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x, segmap)))
        h = self.conv2(self.act(self.norm2(h, segmap)))
        return self.skip(x) + h


class SPADEGenerator(nn.Module):
    """``G(m, z)``: label map (+ noise) -> one image channel in the unit range ``[-1, 1]``.

    Args:
        spatial_dims: 2 (slices; 2.5D with ``context_slices > 0``) or 3 (patches).
        num_labels: number of label channels (including background at index 0).
        channels: widths per resolution level; each level halves the resolution, so inputs
            must be divisible by ``2 ** (len(channels) - 1)`` (the sliding window guarantees it).
        noise_channels: channels of the spatial Gaussian noise input ``z`` (diversity).
        spade_hidden: width of SPADE's shared layer.
        context_slices: 2.5D only: label slices read on each side of the centre slice.
        out_channels: image channels produced (1).
    """

    def __init__(self, *, spatial_dims: int = 3, num_labels: int, channels: Sequence[int] = (16, 32, 64),
                 noise_channels: int = 2, spade_hidden: int = 32, context_slices: int = 0, out_channels: int = 1):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if context_slices and spatial_dims != 2:
            raise ValueError("context_slices (2.5D) needs spatial_dims=2")
        if num_labels < 2 or not channels:
            raise ValueError("need at least 2 labels and one channel level")
        self.spatial_dims = spatial_dims
        self.num_labels = int(num_labels)
        self.context_slices = int(context_slices)
        self.noise_channels = int(noise_channels)
        self.label_slices = 2 * self.context_slices + 1
        cond_nc = self.num_labels * self.label_slices
        channels = [int(c) for c in channels]
        conv = _conv(spatial_dims)
        self.stem = nn.Sequential(conv(cond_nc + self.noise_channels, channels[0], 3, padding=1), nn.LeakyReLU(0.2))
        self.down = nn.ModuleList(
            nn.Sequential(conv(channels[i - 1], channels[i], 3, stride=2, padding=1), nn.LeakyReLU(0.2))
            for i in range(1, len(channels)))
        self.bottleneck = SPADEResBlock(spatial_dims=spatial_dims, in_channels=channels[-1],
                                        out_channels=channels[-1], label_nc=cond_nc, hidden=spade_hidden)
        self.up_convs = nn.ModuleList(conv(channels[i], channels[i - 1], 3, padding=1)
                                      for i in range(len(channels) - 1, 0, -1))
        self.up_blocks = nn.ModuleList(
            SPADEResBlock(spatial_dims=spatial_dims, in_channels=2 * channels[i - 1], out_channels=channels[i - 1],
                          label_nc=cond_nc, hidden=spade_hidden)
            for i in range(len(channels) - 1, 0, -1))
        self.head = nn.Sequential(nn.LeakyReLU(0.2), conv(channels[0], out_channels, 3, padding=1))
        # the per-label intensity prior: mean[m], one weight per label (see init_label_means)
        self.label_mean = conv(self.num_labels, out_channels, 1, bias=False)
        nn.init.zeros_(self.label_mean.weight)
        nn.init.zeros_(self.head[1].weight)
        nn.init.zeros_(self.head[1].bias)

    @property
    def in_channels(self) -> int:
        """Channels the input tensor must have: label-index slices then noise."""
        return self.label_slices + self.noise_channels

    @property
    def divisor(self) -> int:
        """Spatial sizes must be multiples of this."""
        return 2 ** len(self.down)

    def init_label_means(self, means: Sequence[float]) -> None:
        """Set the per-label intensity prior (unit range), e.g. from the training data."""
        values = torch.as_tensor(list(means), dtype=self.label_mean.weight.dtype)
        if values.numel() != self.num_labels:
            raise ValueError(f"need {self.num_labels} label means, got {values.numel()}")
        with torch.no_grad():
            self.label_mean.weight.copy_(values.view(1, -1, *([1] * self.spatial_dims)))

    def condition(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The one-hot condition (all label slices) and the centre slice's one-hot map."""
        onehots = [one_hot_labels(x[:, i:i + 1], self.num_labels) for i in range(self.label_slices)]
        return torch.cat(onehots, 1), onehots[self.context_slices]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, label_slices + noise_channels, *S)``; returns ``(B, 1, *S)`` (unit range, unclamped)."""
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels (label slices + noise), got {x.shape[1]}")
        cond, centre = self.condition(x)
        noise = x[:, self.label_slices:]
        h = self.stem(torch.cat([cond, noise], 1))
        skips = [h]
        for down in self.down:
            h = down(h)
            skips.append(h)
        h = self.bottleneck(skips.pop(), cond)
        for up_conv, block in zip(self.up_convs, self.up_blocks):
            h = up_conv(F.interpolate(h, scale_factor=2, mode="nearest"))
            h = block(torch.cat([h, skips.pop()], 1), cond)
        return self.label_mean(centre) + self.head(h)
