"""CycleGAN objective, structure losses and the image pool: values, gradients, state."""

import pytest
import torch
from monai.networks.nets import PatchDiscriminator
from torch import nn

from medgen.networks.resnet_generator import ResnetGenerator
from medgen.objectives.cyclegan import CycleGANObjective, lsgan_loss
from medgen.objectives.image_pool import ImagePool
from medgen.objectives.shape import TranslatorSpaceSegmenter
from medgen.objectives.structure import GradientCorrelationLoss, MINDLoss


pytestmark = pytest.mark.usefixtures("one_thread")


def _nets(channels=1, seed=0):
    torch.manual_seed(seed)
    g = ResnetGenerator(spatial_dims=2, in_channels=channels, out_channels=channels, features=4, n_blocks=1)
    f = ResnetGenerator(spatial_dims=2, in_channels=channels, out_channels=channels, features=4, n_blocks=1)
    d = [PatchDiscriminator(spatial_dims=2, channels=4, in_channels=channels, norm="INSTANCE") for _ in range(2)]
    return g, f, d[0], d[1]


def _batch(channels=1, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(2, channels, 32, 32, generator=gen) * 2 - 1, torch.rand(2, channels, 32, 32, generator=gen) * 2 - 1)


def test_lsgan_targets():
    assert lsgan_loss(torch.ones(3), True).item() == 0.0
    assert lsgan_loss(torch.zeros(3), False).item() == 0.0
    assert lsgan_loss(torch.zeros(3), True).item() == 1.0


def test_identity_generators_give_zero_cycle_and_identity_losses():
    g, f, d_ct, d_mr = _nets()
    obj = CycleGANObjective(nn.Identity(), nn.Identity(), d_ct, d_mr, pool_size=0)
    mr, ct = _batch()
    losses, _ = obj.generator_loss(mr, ct)
    for key in ("cycle_mr", "cycle_ct", "identity_ct", "identity_mr"):
        assert losses[key].item() == 0.0
    expected = losses["adv_ct"] + losses["adv_mr"]
    assert torch.allclose(losses["total"], expected)


def test_cycle_noise_reaches_the_way_back_only():
    """With identity generators the cycle error is exactly the noise: L1 of N(0, s) is s*sqrt(2/pi)."""
    _, _, d_ct, d_mr = _nets()
    obj = CycleGANObjective(nn.Identity(), nn.Identity(), d_ct, d_mr, pool_size=0, lambda_identity=0,
                            cycle_noise=0.2)
    mr, ct = torch.zeros(4, 1, 64, 64), torch.zeros(4, 1, 64, 64)
    torch.manual_seed(0)
    losses, images = obj.generator_loss(mr, ct)
    assert torch.equal(images["fake_ct"], mr) and torch.equal(images["fake_mr"], ct)  # translations stay clean
    expected = 0.2 * (2 / torch.pi) ** 0.5
    for key in ("cycle_mr", "cycle_ct"):
        assert abs(losses[key].item() - expected) < 0.01
    torch.manual_seed(0)
    again, _ = obj.generator_loss(mr, ct)
    assert again["cycle_mr"].item() == losses["cycle_mr"].item()  # drawn from the (checkpointed) global RNG


def test_generator_step_updates_only_generators_and_weights_add_up():
    g, f, d_ct, d_mr = _nets(channels=3)
    obj = CycleGANObjective(g, f, d_ct, d_mr, lambda_cycle=10, lambda_identity=0.5, structure=MINDLoss(),
                            lambda_structure=2.0, pool_size=4)
    mr, ct = _batch(channels=3)
    losses, images = obj.generator_loss(mr, ct)
    total = (losses["adv_ct"] + losses["adv_mr"] + 10 * (losses["cycle_mr"] + losses["cycle_ct"])
             + 5 * (losses["identity_ct"] + losses["identity_mr"]) + 2 * (losses["structure_mr"] + losses["structure_ct"]))
    assert torch.allclose(losses["total"], total, rtol=1e-5)
    losses["total"].backward()
    assert all(p.grad is None for p in d_ct.parameters())
    assert all(p.grad is None for p in d_mr.parameters())
    assert all(p.requires_grad for p in d_ct.parameters())  # flags restored after the step
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters())
    assert images["fake_ct"].shape == mr.shape and not images["fake_ct"].requires_grad
    d_losses = obj.discriminator_loss(mr, ct, images["fake_ct"], images["fake_mr"])
    d_losses["total"].backward()
    assert any(p.grad is not None for p in d_ct.parameters())
    assert len(obj.pool_ct) == 2


def test_batched_passes_compute_the_same_losses():
    mr, ct = _batch(channels=3)
    results = []
    for batched in (True, False):
        g, f, d_ct, d_mr = _nets(channels=3)
        obj = CycleGANObjective(g, f, d_ct, d_mr, pool_size=0, batch_passes=batched)
        losses, images = obj.generator_loss(mr, ct)
        d_losses = obj.discriminator_loss(mr, ct, images["fake_ct"], images["fake_mr"])
        results.append({**{k: v.item() for k, v in losses.items()}, **{f"d_{k}": v.item() for k, v in d_losses.items()}})
    for key in results[0]:
        assert results[0][key] == pytest.approx(results[1][key], rel=1e-4, abs=1e-6), key


def test_air_term_is_zero_only_when_background_is_air():
    _, _, d_ct, d_mr = _nets()
    mr, ct = _batch()
    mask = torch.zeros_like(mr)
    mask[..., 8:24, 8:24] = 1

    class Const(nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, x):
            return torch.where(mask[:1].bool(), x, torch.full_like(x, self.value))

    air = CycleGANObjective(Const(-1.0), nn.Identity(), d_ct, d_mr, lambda_air=1.0, pool_size=0)
    assert air.generator_loss(mr, ct, mr_mask=mask)[0]["air"].item() == 0.0
    tissue = CycleGANObjective(Const(0.0), nn.Identity(), d_ct, d_mr, lambda_air=1.0, pool_size=0)
    outside = 1 - mask.mean().item()
    assert tissue.generator_loss(mr, ct, mr_mask=mask)[0]["air"].item() == pytest.approx(outside, rel=1e-5)


def test_shape_consistency_uses_a_frozen_segmenter():
    g, f, d_ct, d_mr = _nets(channels=3)
    torch.manual_seed(3)
    seg_net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))
    seg = TranslatorSpaceSegmenter(seg_net, segmenter_dims=2, ct_window=(-1000, 1000))
    obj = CycleGANObjective(g, f, d_ct, d_mr, segmenter=seg, lambda_shape=1.0, pool_size=0)
    mr, ct = _batch(channels=3)
    losses, _ = obj.generator_loss(mr, ct)
    assert torch.isfinite(losses["shape"]) and losses["shape"] > 0
    losses["total"].backward()
    assert all(p.grad is None and not p.requires_grad for p in seg_net.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in f.parameters())
    # the shape term alone: CE against the segmenter's own labels of the real CT is minimal when rec == real
    assert obj.shape_loss(ct, ct) < obj.shape_loss(ct, -ct)


def test_translator_space_segmenter_rescales_window():
    seen = {}

    class Probe(nn.Module):
        def forward(self, x):
            seen["x"] = x
            return torch.zeros(x.shape[0], 2, *x.shape[2:])

    seg = TranslatorSpaceSegmenter(Probe(), segmenter_dims=3, ct_window=(-1000, 1000), hu_range=(-500, 500),
                                   size_multiple=4)
    out = seg(torch.zeros(1, 3, 8, 8))  # 0 = 0 HU -> 0 in [-500, 500] -> [-1, 1]
    assert tuple(out.shape) == (1, 2, 3, 8, 8)
    assert seen["x"].shape[-1] == 4 and float(seen["x"].abs().max()) == 0.0


def test_structure_losses_are_modality_independent_and_see_misalignment():
    torch.manual_seed(0)
    base = torch.zeros(1, 1, 32, 32)
    base[..., 8:20, 10:22] = 1.0
    base = base + 0.05 * torch.randn_like(base)
    inverted = 1.0 - 2.0 * base  # other "modality": reversed contrast and scale
    shifted = torch.roll(inverted, shifts=4, dims=-1)
    for loss in (MINDLoss(), GradientCorrelationLoss()):
        assert loss(base, inverted) < 0.5 * loss(base, shifted)
    assert MINDLoss()(base, base).item() == pytest.approx(0.0, abs=1e-6)
    mask = torch.ones_like(base)
    assert MINDLoss()(base, shifted, mask).item() == pytest.approx(MINDLoss()(base, shifted).item(), rel=1e-5)


def test_image_pool_state_round_trip_reproduces_queries():
    pool = ImagePool(3, seed=5)
    for i in range(4):
        pool.query(torch.full((2, 1, 2, 2), float(i)))
    state = pool.state_dict()
    first = pool.query(torch.full((4, 1, 2, 2), 9.0))
    other = ImagePool(3, seed=123)
    other.load_state_dict(state)
    again = other.query(torch.full((4, 1, 2, 2), 9.0))
    assert torch.equal(first, again)
    assert len(other) == 3


def test_quantile_distance_is_zero_for_equal_distributions_and_grows_with_offset():
    from medgen.objectives.cyclegan import quantile_distance
    x = torch.rand(2, 1, 16, 16)
    shuffled = x.flatten()[torch.randperm(x.numel())].reshape(x.shape)
    assert quantile_distance(x, shuffled).item() == pytest.approx(0.0, abs=1e-7)
    assert quantile_distance(x, x + 0.1).item() == pytest.approx(0.1, abs=1e-5)
    y = x.clone().requires_grad_(True)
    quantile_distance(y, x + 0.1).backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
