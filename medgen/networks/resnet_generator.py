"""ResNet encoder - residual blocks - decoder generator for image-to-image translation.

The CycleGAN generator family (Johnson et al. style: a 7-wide stem, strided down-sampling,
residual blocks at low resolution, up-sampling back), for 2D, 2.5D and 3D:

* ``spatial_dims=2`` with ``in_channels=1``: plain 2D slices.
* ``spatial_dims=2`` with ``in_channels=k``: 2.5D -- ``k`` adjacent slices enter as channels.
  The translator trains it with ``out_channels=k`` (the whole stack is translated, so the cycle
  ``F(G(x))`` is defined and the discriminators judge inter-slice consistency); at inference the
  centre channel is the prediction for the centre slice, optionally blended with the overlapping
  stacks' predictions for the same slice (see :mod:`medgen.inference.translate`).
* ``spatial_dims=3``: 3D patches.

Why up-sampling by resize + convolution: transposed convolutions with stride 2 overlap unevenly
and print checkerboard patterns into synthetic CTs (seen in medgen's first naive attempt);
nearest/linear resizing followed by a 3x3 convolution does not. ``upsample="transpose"`` is kept
for comparison only.

Output: ``tanh`` in [-1, 1], i.e. the normalised intensity space of the target modality (for CT,
HU through the preprocessing window, see :func:`medgen.transforms.intensity.unit_to_hu`).

Examples:
    >>> import torch
    >>> net = ResnetGenerator(spatial_dims=2, in_channels=3, out_channels=3, features=4, n_blocks=1)
    >>> y = net(torch.zeros(1, 3, 32, 32))
    >>> tuple(y.shape), bool(y.abs().max() <= 1)
    ((1, 3, 32, 32), True)
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResnetGenerator"]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_PAD = {2: nn.ReflectionPad2d, 3: nn.ReflectionPad3d}
_INSTANCE = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_BATCH = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _norm(kind: str, dims: int, channels: int) -> nn.Module:
    if kind == "instance":
        return _INSTANCE[dims](channels, affine=True)
    if kind == "batch":
        return _BATCH[dims](channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm '{kind}'; use instance, batch, group or none")


def _conv_block(dims: int, cin: int, cout: int, kernel: int, norm: str, *, stride: int = 1,
                act: bool = True) -> list[nn.Module]:
    """Reflection padding + convolution + norm + ReLU (padding keeps borders free of zero seams)."""
    layers: list[nn.Module] = []
    pad = kernel // 2
    if stride == 1 and pad:
        layers.append(_PAD[dims](pad))
        pad = 0
    layers += [_CONV[dims](cin, cout, kernel, stride=stride, padding=pad, bias=norm in ("none", "batch")),
               _norm(norm, dims, cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return layers


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection (optional dropout between them)."""

    def __init__(self, dims: int, channels: int, norm: str, dropout: float = 0.0):
        super().__init__()
        layers = _conv_block(dims, channels, channels, 3, norm)
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += _conv_block(dims, channels, channels, 3, norm, act=False)
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResizeConv(nn.Module):
    """Up-sample by ``factor`` (resize) then a 3x3 convolution: checkerboard-free up-sampling."""

    def __init__(self, dims: int, cin: int, cout: int, norm: str, mode: str = "nearest"):
        super().__init__()
        self.mode = mode
        self.conv = nn.Sequential(*_conv_block(dims, cin, cout, 3, norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        align = None if self.mode == "nearest" else False
        x = nn.functional.interpolate(x, scale_factor=2, mode=self.mode, align_corners=align)
        return self.conv(x)


class ResnetGenerator(nn.Module):
    """Encoder (``n_down`` stride-2 convs) - ``n_blocks`` residual blocks - decoder; tanh output.

    Args:
        spatial_dims: 2 (2D / 2.5D slices) or 3 (patches).
        in_channels: 1 for 2D/3D, ``k`` for 2.5D stacks of ``k`` adjacent slices.
        out_channels: channels produced (``k`` for 2.5D training, see the module docstring).
        features: width of the first layer; doubles at each down-sampling.
        n_down: number of stride-2 down-samplings; inputs must be divisible by ``2**n_down``
            (inference pads for you).
        n_blocks: residual blocks at the lowest resolution (capacity / receptive field).
        norm: ``instance`` (CycleGAN default), ``batch``, ``group`` or ``none``.
        upsample: ``nearest`` or ``linear`` (resize + conv), or ``transpose`` (for comparison).
        dropout: dropout inside residual blocks.
        stem_kernel: kernel size of the first and last convolutions (7 in CycleGAN).
    """

    def __init__(self, *, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1, features: int = 32,
                 n_down: int = 2, n_blocks: int = 6, norm: str = "instance", upsample: str = "nearest",
                 dropout: float = 0.0, stem_kernel: int = 7):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, not {spatial_dims}")
        if upsample not in ("nearest", "linear", "transpose"):
            raise ValueError(f"upsample must be nearest, linear or transpose, not {upsample!r}")
        dims = spatial_dims
        self.spatial_dims = dims
        self.n_down = n_down
        layers: list[nn.Module] = _conv_block(dims, in_channels, features, stem_kernel, norm)
        ch = features
        for _ in range(n_down):
            layers += _conv_block(dims, ch, ch * 2, 3, norm, stride=2)
            ch *= 2
        layers += [ResidualBlock(dims, ch, norm, dropout) for _ in range(n_blocks)]
        for _ in range(n_down):
            if upsample == "transpose":
                layers += [_CONV_T[dims](ch, ch // 2, 3, stride=2, padding=1, output_padding=1, bias=norm == "none"),
                           _norm(norm, dims, ch // 2), nn.ReLU(inplace=True)]
            else:
                layers.append(ResizeConv(dims, ch, ch // 2, norm,
                                         "nearest" if upsample == "nearest" else ("bilinear" if dims == 2 else "trilinear")))
            ch //= 2
        layers += [_PAD[dims](stem_kernel // 2), _CONV[dims](ch, out_channels, stem_kernel), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    @property
    def size_multiple(self) -> int:
        """Every spatial size of the input must be a multiple of this."""
        return 2 ** self.n_down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"expected a {self.spatial_dims + 2}D tensor (batch, channels, ...), got {tuple(x.shape)}")
        bad = [s for s in x.shape[2:] if s % self.size_multiple]
        if bad:
            raise ValueError(f"spatial sizes {tuple(x.shape[2:])} must be multiples of {self.size_multiple}")
        return self.model(x)
