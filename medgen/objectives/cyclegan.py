"""The CycleGAN objective for unpaired MR <-> CT translation, as a module that returns losses.

Paper-to-code symbol map (Zhu et al., ICCV 2017, with X = MR and Y = CT):

=============  ==============  ==========================================================
paper          code            meaning
=============  ==============  ==========================================================
G: X -> Y      ``g_mr2ct``     MR -> synthetic CT (the model users export and apply)
F: Y -> X      ``g_ct2mr``     CT -> synthetic MR (needed for the cycle only)
D_Y            ``d_ct``        tells real CT from G(MR)
D_X            ``d_mr``        tells real MR from F(CT)
L_GAN          ``adv_*``       least-squares GAN loss (Mao et al. 2017), as in CycleGAN
L_cyc          ``cycle_*``     ||F(G(x)) - x||_1 + ||G(F(y)) - y||_1, weight ``lambda_cycle`` (10)
L_identity     ``identity_*``  ||G(y) - y||_1 + ||F(x) - x||_1, weight lambda_identity*lambda_cycle
=============  ==============  ==========================================================

medgen's additions (each optional, weight 0 disables it):

* ``structure`` -- a modality-independent structure term between x and G(x) (and y and F(y)),
  e.g. MIND or gradient correlation (:mod:`medgen.objectives.structure`), so anatomy is kept
  where it is instead of hallucinated.
* ``shape`` -- shape consistency with a frozen CT segmenter S (Zhang et al., CVPR 2018):
  ``CE(S(G(F(y))), labels(y))`` where the labels are given or S's own prediction on y.
* ``air`` -- keep background air as air: L1 between G(x) and -1 (air in the CT window) outside
  the MR's body mask.
* ``cycle_noise`` -- Gaussian noise (std in [-1, 1] units) added to G(x) and F(y) before they
  are translated back in the cycle (the "noise defence" of Bashkirova et al., NeurIPS 2019).
  CycleGAN can satisfy the cycle loss by hiding the source image in low-amplitude patterns of
  the translation (Chu et al. 2017, "a master of steganography"): G then learns to decode
  F's hidden code instead of anatomy, and behaves differently on real MR than on F(CT). Noise
  destroys such codes, so the cycle (and the shape term, which goes through G(F(y))) must be
  met from visible anatomy.
* ``histogram`` -- intensity-distribution matching: L1 between the quantiles of G(x) inside the
  MR body mask and of the (unpaired) real CT batch inside its body mask. Label-free; it pins the
  tissue HU levels, which the adversarial loss enforces only weakly in a wide HU window.
* ``seg_adv`` -- output-space adversarial term (Tsai et al., CVPR 2018, "Learning to adapt
  structured output space"): a discriminator D_SEG sees the frozen CT segmenter's class
  probabilities, S(y) for real CT against S(G(x)); G learns (through S) to make synthetic CT
  that S segments into CT-like anatomy, which is what the MR -> CT -> segmenter chain needs.
* ``class_intensity`` -- per-tissue levels: the frozen CT segmenter S's classes on G(x) must
  have the mean intensity of the same classes in real CT
  (:class:`medgen.objectives.class_intensity.ClassIntensityMatch`).

The networks may be DistributedDataParallel wrappers: the generator step calls the
*unwrapped* discriminators (their weights are not updated there, so no gradient sync is wanted).

Examples:
    >>> import torch
    >>> from medgen.networks.resnet_generator import ResnetGenerator
    >>> from monai.networks.nets import PatchDiscriminator
    >>> torch.manual_seed(0) and None
    >>> g = lambda: ResnetGenerator(spatial_dims=2, features=4, n_blocks=1)
    >>> d = lambda: PatchDiscriminator(spatial_dims=2, channels=4, in_channels=1, norm="INSTANCE")
    >>> from medgen.training.translator import LossConfig
    >>> obj = CycleGANObjective(g(), g(), d(), d(), weights=LossConfig(pool_size=4))
    >>> mr, ct = torch.rand(2, 1, 32, 32) * 2 - 1, torch.rand(2, 1, 32, 32) * 2 - 1
    >>> losses, images = obj.generator_loss(mr, ct)
    >>> sorted(k for k in losses if k.startswith("cycle"))
    ['cycle_ct', 'cycle_mr']
    >>> d_losses = obj.discriminator_loss(mr, ct, images["fake_ct"], images["fake_mr"])
    >>> bool(d_losses["total"] > 0)
    True
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from medgen.objectives.class_intensity import ClassIntensityMatch
from medgen.objectives.image_pool import ImagePool
from medgen.distributed import unwrap

__all__ = ["CycleGANObjective", "lsgan_loss", "quantile_distance", "segment_probabilities"]


class LossWeights(Protocol):
    """The weights :class:`CycleGANObjective` reads (the translator config's ``loss`` section has them)."""

    lambda_cycle: float
    lambda_identity: float
    pool_size: int
    lambda_structure: float
    lambda_shape: float
    lambda_air: float
    lambda_histogram: float
    lambda_class_intensity: float
    lambda_seg_adv: float
    cycle_noise: float


def _score(discriminator: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The patch scores of a discriminator (MONAI's PatchDiscriminator returns a feature list)."""
    out = discriminator(x)
    return (out[-1] if isinstance(out, (list, tuple)) else out).float()


def lsgan_loss(scores: torch.Tensor, target_real: bool) -> torch.Tensor:
    """Least-squares GAN loss: mean (score - 1)^2 for real targets, mean score^2 for fake ones."""
    target = torch.ones_like(scores) if target_real else torch.zeros_like(scores)
    return F.mse_loss(scores, target)


class CycleGANObjective(nn.Module):
    """All CycleGAN losses for one batch of unpaired MR and CT (see the module docstring).

    Args:
        g_mr2ct: G, MR -> CT generator.
        g_ct2mr: F, CT -> MR generator.
        d_ct: D_CT, discriminator on CT; d_mr: D_MR, discriminator on MR.
        weights: the loss weights, read by name: the translator config's ``loss`` section
            (:class:`medgen.training.translator.LossConfig`, the one place their defaults live):
            ``lambda_cycle``, ``lambda_identity`` (relative to ``lambda_cycle``), ``pool_size`` (image
            pool capacity per direction; 0 disables), ``lambda_structure``, ``lambda_shape``,
            ``lambda_air`` ("air stays air outside the MR body mask"), ``lambda_histogram``
            (quantile match of G(x) to real CT in the bodies), ``lambda_class_intensity`` (needs
            ``segmenter``), ``lambda_seg_adv`` (G's adversarial term against ``d_seg``) and
            ``cycle_noise`` (std of the noise added to each translation before the cycle's way back;
            drawn from torch's global RNG, which the training loop checkpoints).
        structure: a loss module ``(a, b, mask) -> scalar`` comparing structure, or None.
        segmenter: frozen CT segmenter ``ct -> logits`` (same layout as the CT batches), or None.
        d_seg: the output-space discriminator D_SEG on the segmenter's class probabilities (2.5D
            stacks flattened to ``K * C`` channels), or None.
        seed: seed of the image pools' random streams.
        batch_passes: run G on MR and CT (translation + identity) in one concatenated pass, and
            each discriminator on real + fake in one pass, when the networks have no batch
            statistics (then it is the same computation, just faster); False runs them apart.
    """

    def __init__(self, g_mr2ct: nn.Module, g_ct2mr: nn.Module, d_ct: nn.Module, d_mr: nn.Module, *,
                 weights: LossWeights, structure: nn.Module | None = None,
                 segmenter: nn.Module | Callable | None = None, d_seg: nn.Module | None = None,
                 seed: int = 0, batch_passes: bool = True):
        super().__init__()
        self.batch_passes = batch_passes
        self.g_mr2ct, self.g_ct2mr, self.d_ct, self.d_mr = g_mr2ct, g_ct2mr, d_ct, d_mr
        self.lambda_cycle = float(weights.lambda_cycle)
        self.lambda_identity = float(weights.lambda_identity)
        self.structure = structure
        self.lambda_structure = float(weights.lambda_structure)
        self.lambda_shape = float(weights.lambda_shape)
        self.lambda_air = float(weights.lambda_air)
        self.lambda_histogram = float(weights.lambda_histogram)
        self.cycle_noise = float(weights.cycle_noise)
        self.segmenter = segmenter
        if isinstance(segmenter, nn.Module):
            segmenter.eval()
            for p in segmenter.parameters():
                p.requires_grad_(False)
        self.lambda_class_intensity = float(weights.lambda_class_intensity)
        if self.lambda_class_intensity > 0 and segmenter is None:
            raise ValueError("lambda_class_intensity needs a segmenter (the classes come from it)")
        self.class_intensity = ClassIntensityMatch(segmenter) if self.lambda_class_intensity > 0 else None
        self.d_seg = d_seg
        self.lambda_seg_adv = float(weights.lambda_seg_adv)
        if d_seg is not None and segmenter is None:
            raise ValueError("d_seg (output-space adversarial term) needs a segmenter")
        self.pool_ct = ImagePool(weights.pool_size, seed=seed)
        self.pool_mr = ImagePool(weights.pool_size, seed=seed + 1)

    def generator_loss(self, real_mr: torch.Tensor, real_ct: torch.Tensor, *, mr_mask: torch.Tensor | None = None,
                       ct_mask: torch.Tensor | None = None, ct_labels: torch.Tensor | None = None
                       ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Losses of G and F for one batch.

        Args:
            real_mr, real_ct: (B, C, ...) batches in [-1, 1] (unpaired).
            mr_mask, ct_mask: optional body masks (same shape, 1 inside): the structure term is
                weighted inside them and the air term uses ``mr_mask``.
            ct_labels: optional (B, ...) integer labels of ``real_ct`` for the shape term.

        Returns:
            ``(losses, images)``: ``losses["total"]`` is what to back-propagate, the other entries
            are its (weighted-before-summing) components; ``images`` holds ``fake_ct``,
            ``fake_mr`` (detached, for the discriminator step and pictures), ``rec_mr``, ``rec_ct``.
        """
        G, Fn = self.g_mr2ct, self.g_ct2mr
        d_ct, d_mr = unwrap(self.d_ct), unwrap(self.d_mr)
        identity = self.lambda_identity > 0
        if identity and self._can_batch(G, Fn) and real_mr.shape == real_ct.shape:
            # one pass per generator for the translation and the identity mapping (same maths with
            # per-sample normalisation, fewer and larger convolutions: faster on CPUs)
            n = real_mr.shape[0]
            fake_ct, idt_ct = G(torch.cat([real_mr, real_ct])).split(n)
            fake_mr, idt_mr = Fn(torch.cat([real_ct, real_mr])).split(n)
        else:
            fake_ct, fake_mr = G(real_mr), Fn(real_ct)
            idt_ct, idt_mr = (G(real_ct), Fn(real_mr)) if identity else (None, None)
        rec_mr = Fn(self._noisy(fake_ct))
        rec_ct = G(self._noisy(fake_mr))
        losses: dict[str, torch.Tensor] = {}
        with _frozen(d_ct), _frozen(d_mr):
            losses["adv_ct"] = lsgan_loss(_score(d_ct, fake_ct), True)
            losses["adv_mr"] = lsgan_loss(_score(d_mr, fake_mr), True)
        losses["cycle_mr"] = F.l1_loss(rec_mr.float(), real_mr.float())
        losses["cycle_ct"] = F.l1_loss(rec_ct.float(), real_ct.float())
        total = losses["adv_ct"] + losses["adv_mr"] + self.lambda_cycle * (losses["cycle_mr"] + losses["cycle_ct"])
        if identity:
            losses["identity_ct"] = F.l1_loss(idt_ct.float(), real_ct.float())
            losses["identity_mr"] = F.l1_loss(idt_mr.float(), real_mr.float())
            total = total + self.lambda_cycle * self.lambda_identity * (losses["identity_ct"] + losses["identity_mr"])
        if self.structure is not None and self.lambda_structure > 0:
            losses["structure_mr"] = self.structure(real_mr, fake_ct, mr_mask)
            losses["structure_ct"] = self.structure(real_ct, fake_mr, ct_mask)
            total = total + self.lambda_structure * (losses["structure_mr"] + losses["structure_ct"])
        if self.lambda_air > 0 and mr_mask is not None:
            outside = 1.0 - mr_mask.float()
            losses["air"] = ((fake_ct.float() + 1.0).abs() * outside).sum() / outside.numel()
            total = total + self.lambda_air * losses["air"]
        if self.lambda_histogram > 0:
            losses["histogram"] = quantile_distance(fake_ct, real_ct, mr_mask, ct_mask)
            total = total + self.lambda_histogram * losses["histogram"]
        images_extra = {}
        if self.d_seg is not None:
            seg_fake = self.segment_probabilities(fake_ct)
            with _frozen(unwrap(self.d_seg)):
                losses["adv_seg"] = lsgan_loss(_score(unwrap(self.d_seg), seg_fake), True)
            total = total + self.lambda_seg_adv * losses["adv_seg"]
            images_extra["seg_fake"] = seg_fake.detach()
        if self.class_intensity is not None:
            losses["class_intensity"] = self.class_intensity(fake_ct, real_ct, mr_mask, ct_mask)
            total = total + self.lambda_class_intensity * losses["class_intensity"]
        if self.segmenter is not None and self.lambda_shape > 0:
            losses["shape"] = self.shape_loss(real_ct, rec_ct, ct_labels)
            total = total + self.lambda_shape * losses["shape"]
        losses["total"] = total
        images = {"fake_ct": fake_ct.detach(), "fake_mr": fake_mr.detach(), "rec_mr": rec_mr.detach(),
                  "rec_ct": rec_ct.detach(), **images_extra}
        return losses, images

    def _noisy(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` plus the cycle noise (unchanged when it is off)."""
        if self.cycle_noise <= 0:
            return x
        return x + torch.randn_like(x) * self.cycle_noise

    def shape_loss(self, real_ct: torch.Tensor, rec_ct: torch.Tensor, ct_labels: torch.Tensor | None = None
                   ) -> torch.Tensor:
        """Cross-entropy of the frozen segmenter on G(F(y)) against y's labels (or S(y))."""
        if ct_labels is None:
            with torch.no_grad():
                ct_labels = _logits(self.segmenter(real_ct)).argmax(1)
        logits = _logits(self.segmenter(rec_ct)).float()
        return F.cross_entropy(logits, ct_labels.long())

    def segment_probabilities(self, ct: torch.Tensor) -> torch.Tensor:
        """The frozen segmenter's class probabilities on a CT batch, as D_SEG's input (see
        :func:`segment_probabilities`)."""
        return segment_probabilities(self.segmenter, ct)

    def discriminator_loss(self, real_mr: torch.Tensor, real_ct: torch.Tensor, fake_ct: torch.Tensor,
                           fake_mr: torch.Tensor, *, seg_fake: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """LSGAN losses of D_CT and D_MR on real images and pooled (detached) fakes, and of D_SEG
        (when set) on the segmenter's probabilities for ``real_ct`` against ``seg_fake``."""
        fake_ct = self.pool_ct.query(fake_ct.detach())
        fake_mr = self.pool_mr.query(fake_mr.detach())
        losses = {"d_ct": self._d_loss(self.d_ct, real_ct, fake_ct), "d_mr": self._d_loss(self.d_mr, real_mr, fake_mr)}
        losses["total"] = losses["d_ct"] + losses["d_mr"]
        if self.d_seg is not None and seg_fake is not None:
            with torch.no_grad():
                seg_real = self.segment_probabilities(real_ct)
            losses["d_seg"] = self._d_loss(self.d_seg, seg_real, seg_fake.detach())
            losses["total"] = losses["total"] + losses["d_seg"]
        return losses

    def _d_loss(self, d: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """0.5 * (LSGAN(D(real), 1) + LSGAN(D(fake), 0)); real and fake in one pass when that is exact."""
        if self._can_batch(d) and real.shape == fake.shape:
            real_scores, fake_scores = _score(d, torch.cat([real, fake])).split(real.shape[0])
        else:
            real_scores, fake_scores = _score(d, real), _score(d, fake)
        return 0.5 * (lsgan_loss(real_scores, True) + lsgan_loss(fake_scores, False))

    def _can_batch(self, *modules: nn.Module) -> bool:
        """Concatenating batches is exact only without batch statistics (instance/group norm)."""
        if not self.batch_passes:
            return False
        return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for mod in modules for m in mod.modules())

    def forward(self, real_mr: torch.Tensor, real_ct: torch.Tensor, **kwargs):
        """Same as :meth:`generator_loss` (the objective's main use)."""
        return self.generator_loss(real_mr, real_ct, **kwargs)

    def pools_state_dict(self) -> dict:
        """The objective's per-process state: the image pools (and the class-intensity reference)."""
        state = {"ct": self.pool_ct.state_dict(), "mr": self.pool_mr.state_dict()}
        if self.class_intensity is not None:
            state["class_intensity"] = self.class_intensity.state_dict_for_resume()
        return state

    def load_pools_state_dict(self, state: dict) -> None:
        self.pool_ct.load_state_dict(state["ct"])
        self.pool_mr.load_state_dict(state["mr"])
        if self.class_intensity is not None:
            self.class_intensity.load_state_dict_for_resume(state.get("class_intensity", {}))


def quantile_distance(a: torch.Tensor, b: torch.Tensor, mask_a: torch.Tensor | None = None,
                      mask_b: torch.Tensor | None = None, n_quantiles: int = 101) -> torch.Tensor:
    """Mean |Q_a(q) - Q_b(q)| over ``n_quantiles`` levels (1D Wasserstein-1 of the two value sets).

    Values are taken inside the masks (all values without one); differentiable through ``sort``.
    """
    def quantiles(x, m):
        values = x.float().reshape(-1)
        if m is not None:
            keep = m.reshape(-1) > 0.5
            if keep.sum() >= 2:
                values = values[keep]
        values = values.sort().values
        index = torch.linspace(0, values.numel() - 1, n_quantiles, device=values.device).round().long()
        return values[index]

    return (quantiles(a, mask_a) - quantiles(b, mask_b)).abs().mean()


def segment_probabilities(segmenter: nn.Module | Callable, ct: torch.Tensor) -> torch.Tensor:
    """``segmenter``'s class probabilities on a CT batch, laid out as D_SEG's input: (B, K, ...),
    with a 2.5D stack's slices folded into the channels, (B, K * C, X, Y)."""
    p = torch.softmax(_logits(segmenter(ct)).float(), dim=1)
    return p.flatten(1, 2) if p.ndim == ct.ndim + 1 else p


def _logits(out) -> torch.Tensor:
    return out[0] if isinstance(out, (list, tuple)) else out


class _frozen:
    """Temporarily stop gradients into a module's parameters (restores the previous flags)."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.flags: list[bool] = []

    def __enter__(self):
        params = list(self.module.parameters())
        self.flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        return self.module

    def __exit__(self, *exc):
        for p, flag in zip(self.module.parameters(), self.flags):
            p.requires_grad_(flag)
        return False
