"""ResnetGenerator: shapes for 2D / 2.5D / 3D, output range, size rules, up-sampling choice."""

import pytest
import torch

from medgen.networks.registry import build_network
from medgen.networks.resnet_generator import ResnetGenerator


@pytest.mark.parametrize("dims,channels,shape", [(2, 1, (2, 32, 32)), (2, 3, (2, 32, 24)), (3, 1, (1, 16, 16, 8))])
def test_shapes_and_range(dims, channels, shape):
    torch.manual_seed(0)
    net = ResnetGenerator(spatial_dims=dims, in_channels=channels, out_channels=channels, features=4, n_blocks=1)
    x = torch.randn(shape[0], channels, *shape[1:]) * 5
    y = net(x)
    assert y.shape == x.shape
    assert y.abs().max() <= 1.0  # tanh: the normalised CT range
    assert net.size_multiple == 4


def test_rejects_sizes_that_are_not_multiples():
    net = ResnetGenerator(spatial_dims=2, features=4, n_blocks=1, n_down=2)
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.zeros(1, 1, 30, 32))
    with pytest.raises(ValueError, match="4D tensor"):
        net(torch.zeros(1, 1, 32, 32, 32))


def test_resize_conv_has_no_transposed_convolutions():
    resize = ResnetGenerator(spatial_dims=2, features=4, n_blocks=1, upsample="nearest")
    transpose = ResnetGenerator(spatial_dims=2, features=4, n_blocks=1, upsample="transpose")
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in resize.modules())
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in transpose.modules()) == 2


def test_resize_conv_output_has_no_checkerboard_on_flat_input():
    """A constant input through resize+conv stays free of the stride-2 period-2 pattern
    that transposed convolutions print (the artefact medgen's first attempt showed)."""
    torch.manual_seed(0)
    net = ResnetGenerator(spatial_dims=2, features=8, n_blocks=1, norm="none", upsample="nearest").eval()
    with torch.no_grad():
        y = net(torch.full((1, 1, 32, 32), 0.3))[0, 0, 8:24, 8:24]
    # compare the mean of the four phases of a 2x2 grid: equal for a checkerboard-free map
    phases = torch.stack([y[i::2, j::2].mean() for i in (0, 1) for j in (0, 1)])
    assert float(phases.max() - phases.min()) < 1e-4


def test_buildable_by_bundle_name():
    net = build_network("medgen.networks.resnet_generator:ResnetGenerator",
                        {"spatial_dims": 2, "in_channels": 3, "out_channels": 3, "features": 4, "n_blocks": 1})
    assert isinstance(net, ResnetGenerator)
