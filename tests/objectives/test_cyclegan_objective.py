"""CycleGAN objective, structure losses and the image pool: values, gradients, state."""

import pytest
import torch
from monai.networks.nets import PatchDiscriminator
from torch import nn

from medgen.networks.resnet_generator import ResnetGenerator
from medgen.objectives.class_intensity import ClassIntensityMatch
from medgen.objectives.cyclegan import CycleGANObjective, lsgan_loss
from medgen.objectives.image_pool import ImagePool
from medgen.objectives.shape import TranslatorSpaceSegmenter
from medgen.objectives.structure import GradientCorrelationLoss, MINDLoss
from medgen.training.translator import LossConfig


pytestmark = pytest.mark.usefixtures("one_thread")


def _nets(channels=1, seed=0):
    torch.manual_seed(seed)
    g = ResnetGenerator(spatial_dims=2, in_channels=channels, out_channels=channels, features=4, n_blocks=1)
    f = ResnetGenerator(spatial_dims=2, in_channels=channels, out_channels=channels, features=4, n_blocks=1)
    d = [PatchDiscriminator(spatial_dims=2, channels=4, in_channels=channels, norm="INSTANCE") for _ in range(2)]
    return g, f, d[0], d[1]


#: the CycleGAN paper's terms only; the schema's defaults (the shipped translator's) add air and histogram
#: terms. shape_segmenter names a bundle in a config; here the segmenter module is passed directly.
PAPER = {"lambda_identity": 0.5, "lambda_air": 0.0, "lambda_histogram": 0.0, "shape_segmenter": "in-memory"}


def _objective(g, f, d_ct, d_mr, *, structure=None, segmenter=None, d_seg=None, batch_passes=True, **weights):
    """A CycleGANObjective with the paper's weights, ``weights`` overriding them (as the config's loss section)."""
    return CycleGANObjective(g, f, d_ct, d_mr, weights=LossConfig(**{**PAPER, **weights}), structure=structure,
                             segmenter=segmenter, d_seg=d_seg, batch_passes=batch_passes)


def _batch(channels=1, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(2, channels, 32, 32, generator=gen) * 2 - 1, torch.rand(2, channels, 32, 32, generator=gen) * 2 - 1)


def test_lsgan_targets():
    assert lsgan_loss(torch.ones(3), True).item() == 0.0
    assert lsgan_loss(torch.zeros(3), False).item() == 0.0
    assert lsgan_loss(torch.zeros(3), True).item() == 1.0


def test_identity_generators_give_zero_cycle_and_identity_losses():
    g, f, d_ct, d_mr = _nets()
    obj = _objective(nn.Identity(), nn.Identity(), d_ct, d_mr, pool_size=0)
    mr, ct = _batch()
    losses, _ = obj.generator_loss(mr, ct)
    for key in ("cycle_mr", "cycle_ct", "identity_ct", "identity_mr"):
        assert losses[key].item() == 0.0
    expected = losses["adv_ct"] + losses["adv_mr"]
    assert torch.allclose(losses["total"], expected)


def test_cycle_noise_reaches_the_way_back_only():
    """With identity generators the cycle error is exactly the noise: L1 of N(0, s) is s*sqrt(2/pi)."""
    _, _, d_ct, d_mr = _nets()
    obj = _objective(nn.Identity(), nn.Identity(), d_ct, d_mr, pool_size=0, lambda_identity=0,
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
    obj = _objective(g, f, d_ct, d_mr, lambda_cycle=10, lambda_identity=0.5, structure=MINDLoss(),
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
        obj = _objective(g, f, d_ct, d_mr, pool_size=0, batch_passes=batched)
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

    air = _objective(Const(-1.0), nn.Identity(), d_ct, d_mr, lambda_air=1.0, pool_size=0)
    assert air.generator_loss(mr, ct, mr_mask=mask)[0]["air"].item() == 0.0
    tissue = _objective(Const(0.0), nn.Identity(), d_ct, d_mr, lambda_air=1.0, pool_size=0)
    outside = 1 - mask.mean().item()
    assert tissue.generator_loss(mr, ct, mr_mask=mask)[0]["air"].item() == pytest.approx(outside, rel=1e-5)


def test_shape_consistency_uses_a_frozen_segmenter():
    g, f, d_ct, d_mr = _nets(channels=3)
    torch.manual_seed(3)
    seg_net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))
    seg = TranslatorSpaceSegmenter(seg_net, segmenter_dims=2, ct_window=(-1000, 1000))
    obj = _objective(g, f, d_ct, d_mr, segmenter=seg, lambda_shape=1.0, pool_size=0)
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


def test_translator_space_segmenter_runs_in_fp32_under_bf16_autocast():
    """The frozen segmenter is a loss network: bf16 autocast around the translator does not reach it."""
    seen = {}

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 2, 1)

        def forward(self, x):
            seen["dtype"] = x.dtype
            return self.conv(x)

    seg = TranslatorSpaceSegmenter(Probe(), segmenter_dims=3, ct_window=(-1000, 1000), size_multiple=4)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = seg(torch.zeros(1, 3, 8, 8, dtype=torch.bfloat16))
    assert seen["dtype"] == torch.float32 and out.dtype == torch.float32


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


class _ThresholdSegmenter(nn.Module):
    """Class 1 where the (unit-range) intensity is above 0, class 0 below: a known tissue map."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(200.0))  # a parameter, to check nothing flows into it

    def forward(self, x):
        return torch.cat([-x, x], 1) * self.weight


def test_class_intensity_pulls_each_class_to_its_real_ct_level():
    seg = _ThresholdSegmenter()
    term = ClassIntensityMatch(seg, momentum=0.0, min_mass=1.0)
    real = torch.cat([torch.full((1, 1, 8, 8), -0.6), torch.full((1, 1, 8, 8), 0.4)], -1)  # levels -0.6 / 0.4
    # a "grey" translation: both classes found but both too close to 0 (the low-contrast mode)
    fake = torch.cat([torch.full((1, 1, 8, 8), -0.1), torch.full((1, 1, 8, 8), 0.1)], -1).requires_grad_(True)
    loss = term(fake, real)
    assert loss.item() == pytest.approx((0.5 + 0.3) / 2, abs=1e-4)
    loss.backward()
    left, right = fake.grad[..., :8], fake.grad[..., 8:]
    # gradient descent lowers class 0 and raises class 1, every voxel of a class alike
    assert (left > 0).all() and (right < 0).all()
    assert torch.allclose(left, left.flatten()[0]) and torch.allclose(right, right.flatten()[0])
    assert seg.weight.grad is None  # the classes are detached: G cannot game S
    # at the real levels the term vanishes
    assert term(real.clone(), real).item() == pytest.approx(0.0, abs=1e-4)


def test_class_intensity_scores_only_classes_present_on_both_sides_and_resumes():
    seg = _ThresholdSegmenter()
    term = ClassIntensityMatch(seg, momentum=0.5, min_mass=4.0)
    real_a = torch.full((1, 1, 4, 4), -0.5)                     # only class 0 so far
    fake = torch.cat([torch.full((1, 1, 4, 4), -0.2), torch.full((1, 1, 4, 4), 0.3)], -1)
    assert term(fake, real_a).item() == pytest.approx(0.3, abs=1e-4)   # class 1 has no reference yet
    real_b = torch.cat([torch.full((1, 1, 4, 4), -0.3), torch.full((1, 1, 4, 4), 0.8)], -1)
    state = term.state_dict_for_resume()
    resumed = ClassIntensityMatch(seg, momentum=0.5, min_mass=4.0)
    resumed.load_state_dict_for_resume(state)
    first, second = term(fake, real_b), resumed(fake, real_b)
    assert first.item() == pytest.approx(second.item())
    # EMA of weighted sums: batch weights (1-m)m = 0.25 (older) and 1-m = 0.5 (newer), 16 voxels each
    assert term.reference_levels()[0].item() == pytest.approx((0.25 * -0.5 + 0.5 * -0.3) / 0.75, abs=1e-4)
    assert term.reference_levels()[1].item() == pytest.approx(0.8, abs=1e-4)
    # a class with too few voxels in the translation is not scored
    mostly_low = torch.full((1, 1, 4, 8), -0.2)
    mostly_low[..., 0, 0] = 0.5
    assert term(mostly_low, real_b).item() == pytest.approx(abs(-0.2 - term.reference_levels()[0].item()), abs=1e-3)


def test_class_intensity_in_the_objective_needs_a_segmenter_and_reaches_g_only():
    g, f, d_ct, d_mr = _nets(channels=3)
    with pytest.raises(ValueError, match="segmenter"):
        _objective(g, f, d_ct, d_mr, lambda_class_intensity=1.0)
    from medgen.training.translator import TranslatorConfig
    with pytest.raises(ValueError, match="shape_segmenter"):   # caught when the config is read
        TranslatorConfig.model_validate({"loss": {"lambda_class_intensity": 1.0}})
    torch.manual_seed(3)
    seg_net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 1))
    seg = TranslatorSpaceSegmenter(seg_net, segmenter_dims=3, ct_window=(-1000, 1000))  # 2.5D stacks as thin volumes
    obj = _objective(g, f, d_ct, d_mr, segmenter=seg, lambda_shape=0.0, lambda_class_intensity=1.0,
                     lambda_cycle=0.0, pool_size=0)
    mr, ct = _batch(channels=3)
    losses, _ = obj.generator_loss(mr, ct)
    assert losses["class_intensity"] > 0
    (losses["class_intensity"]).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters())
    assert all(p.grad is None for p in f.parameters()) and all(p.grad is None for p in seg_net.parameters())
    assert "class_intensity" in obj.pools_state_dict()


def test_windowed_views_show_soft_tissue_contrast_to_the_ct_discriminator():
    from medgen.objectives.ct_views import WindowedViews
    from medgen.training.translator import TranslatorConfig, build_networks
    views = WindowedViews(ct_window=(-1000, 1000), windows=[(-200, 300)])
    fat, muscle = torch.tensor([[[-0.117]]]), torch.tensor([[[0.036]]])   # -117 and +36 HU
    assert (views(muscle) - views(fat))[0, 0].item() == pytest.approx(0.153, abs=1e-4)      # the wide view
    assert (views(muscle) - views(fat))[0, 1].item() == pytest.approx(0.612, abs=1e-3)      # 4x in the soft view
    x = torch.tensor([[[-0.5, 0.0, 0.9]]], requires_grad=True)           # air-ish, water, bone
    views(x)[:, 1].sum().backward()
    assert x.grad[0, 0].tolist() == pytest.approx([0.0, 4.0, 0.0])       # saturated view: no gradient there
    config = TranslatorConfig.model_validate({"model": {"features": 4, "n_blocks": 1, "disc_features": 4,
                                                        "disc_ct_windows": [[-200, 300]]}})
    nets = build_networks(config.model, config.ct_window)
    assert nets["d_ct"](torch.zeros(2, 3, 32, 32))[-1].shape[0] == 2   # 3 slices -> 6 channels inside
    assert isinstance(nets["d_mr"], PatchDiscriminator)                  # D_MR is unchanged
    with pytest.raises(ValueError, match="lo < hi"):
        TranslatorConfig.model_validate({"model": {"disc_ct_windows": [[300, -200]]}})


def test_output_space_adversary_trains_g_through_the_frozen_segmenter():
    g, f, d_ct, d_mr = _nets(channels=3)
    torch.manual_seed(4)
    seg_net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 1))
    seg = TranslatorSpaceSegmenter(seg_net, segmenter_dims=3, ct_window=(-1000, 1000))
    d_seg = PatchDiscriminator(spatial_dims=2, channels=4, in_channels=3 * 3, norm="INSTANCE")  # K=3 classes x 3 slices
    with pytest.raises(ValueError, match="segmenter"):
        _objective(g, f, d_ct, d_mr, d_seg=d_seg, lambda_seg_adv=1.0)
    obj = _objective(g, f, d_ct, d_mr, segmenter=seg, lambda_shape=0.0, d_seg=d_seg, lambda_seg_adv=1.0,
                     lambda_cycle=0.0, pool_size=0)
    mr, ct = _batch(channels=3)
    probs = obj.segment_probabilities(ct)
    assert probs.shape == (2, 9, 32, 32) and torch.allclose(probs.view(2, 3, 3, 32, 32).sum(1), torch.ones(2, 3, 32, 32))
    losses, images = obj.generator_loss(mr, ct)
    losses["adv_seg"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters())   # through S into G
    assert all(p.grad is None for p in d_seg.parameters()) and all(p.grad is None for p in seg_net.parameters())
    d_losses = obj.discriminator_loss(mr, ct, images["fake_ct"], images["fake_mr"], seg_fake=images["seg_fake"])
    assert d_losses["d_seg"] > 0 and torch.allclose(d_losses["total"], d_losses["d_ct"] + d_losses["d_mr"] + d_losses["d_seg"])
    g.zero_grad()
    d_losses["total"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in d_seg.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in g.parameters())          # D step leaves G alone
