"""Conditional GAN objective for label -> image generators (pix2pix / SPADE family).

Paper-to-code map: ``G(m, z)`` = the generator (label map ``m`` as index channels, noise ``z``),
``D(m, x)`` = a PatchGAN discriminator that sees the one-hot label map and an image (MONAI's
``PatchDiscriminator`` returns every layer's features, the last one being the patch logits).

Generator loss (what :meth:`ConditionalGANObjective.generator_losses` returns)::

    L_G = w_adv * adv(D(m, G(m, z)))                       # fool D
        + w_fm  * sum_l |D_l(m, x) - D_l(m, G(m, z))|_1     # feature matching (pix2pixHD)
        + w_l1  * |x - G(m, z)|_1                           # paired reconstruction (pix2pix)

Discriminator loss: hinge (SPADE) or least squares, real pairs ``(m, x)`` vs fake ``(m, G)``.

Examples:
    >>> import torch
    >>> from monai.networks.nets import PatchDiscriminator
    >>> from medgen.networks.spade_generator import SPADEGenerator
    >>> g = SPADEGenerator(spatial_dims=2, num_labels=3, channels=(4, 8), noise_channels=1, spade_hidden=4)
    >>> d = PatchDiscriminator(spatial_dims=2, channels=4, in_channels=4, num_layers_d=2, norm="INSTANCE")
    >>> from medgen.training.generator import GeneratorLossConfig
    >>> obj = ConditionalGANObjective(g, d, weights=GeneratorLossConfig())
    >>> labels, real = torch.randint(0, 3, (2, 1, 16, 16)).float(), torch.rand(2, 1, 16, 16)
    >>> loss, parts, fake = obj.generator_losses(labels, torch.randn(2, 1, 16, 16), real)
    >>> sorted(parts)
    ['g_adv', 'g_fm', 'g_l1']
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from medgen.networks.spade_generator import one_hot_labels


class GANWeights(Protocol):
    """The weights :class:`ConditionalGANObjective` reads (the generator config's ``loss`` section has them)."""

    adversarial: float
    feature_matching: float
    l1: float
    gan_mode: str


class ConditionalGANObjective(nn.Module):
    """Wraps ``G`` and ``D`` and returns their losses.

    Args:
        generator: a :class:`~medgen.networks.spade_generator.SPADEGenerator` (or any module with
            ``num_labels``, ``label_slices``, ``context_slices`` and the same input layout).
        discriminator: PatchGAN taking ``num_labels + 1`` channels (one-hot centre slice + image),
            returning a list of features with the logits last.
        weights: the loss weights, read by name: the generator config's ``loss`` section
            (:class:`medgen.training.generator.GeneratorLossConfig`, the one place their defaults
            live): ``adversarial``, ``feature_matching``, ``l1`` and ``gan_mode`` (``"hinge"`` or
            ``"lsgan"``).
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, *, weights: GANWeights):
        super().__init__()
        gan_mode = weights.gan_mode
        if gan_mode not in ("hinge", "lsgan"):
            raise ValueError(f"gan_mode must be 'hinge' or 'lsgan', got {gan_mode!r}")
        self.generator = generator
        self.discriminator = discriminator
        self.w_adv, self.w_fm, self.w_l1 = float(weights.adversarial), float(weights.feature_matching), float(weights.l1)
        self.gan_mode = gan_mode

    def _centre_onehot(self, labels: torch.Tensor) -> torch.Tensor:
        k = self.generator.context_slices
        return one_hot_labels(labels[:, k:k + 1], self.generator.num_labels)

    def _d(self, onehot: torch.Tensor, image: torch.Tensor) -> list[torch.Tensor]:
        return self.discriminator(torch.cat([onehot, image], 1))

    def generate(self, labels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``G(m, z)`` from label-index channels and noise."""
        return self.generator(torch.cat([labels, noise], 1))

    def generator_losses(self, labels: torch.Tensor, noise: torch.Tensor, real: torch.Tensor
                         ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """The generator's total loss, its parts (floats, for logging) and the fake batch."""
        fake = self.generate(labels, noise)
        onehot = self._centre_onehot(labels)
        fake_feats = self._d(onehot, fake)
        logits = fake_feats[-1]
        adv = -logits.mean() if self.gan_mode == "hinge" else F.mse_loss(logits, torch.ones_like(logits))
        with torch.no_grad():
            real_feats = self._d(onehot, real)
        pairs = list(zip(fake_feats[:-1], real_feats[:-1]))
        fm = sum(F.l1_loss(f, r.detach()) for f, r in pairs) / len(pairs) if pairs else logits.new_zeros(())
        l1 = F.l1_loss(fake, real)
        total = self.w_adv * adv + self.w_fm * fm + self.w_l1 * l1
        return total, {"g_adv": adv.item(), "g_fm": float(fm.detach()), "g_l1": l1.item()}, fake

    def discriminator_losses(self, labels: torch.Tensor, real: torch.Tensor, fake: torch.Tensor
                             ) -> tuple[torch.Tensor, dict[str, float]]:
        """The discriminator's loss on real pairs and (detached) fake pairs."""
        onehot = self._centre_onehot(labels)
        real_logits = self._d(onehot, real)[-1]
        fake_logits = self._d(onehot, fake.detach())[-1]
        if self.gan_mode == "hinge":
            loss_real = F.relu(1.0 - real_logits).mean()
            loss_fake = F.relu(1.0 + fake_logits).mean()
        else:
            loss_real = F.mse_loss(real_logits, torch.ones_like(real_logits))
            loss_fake = F.mse_loss(fake_logits, torch.zeros_like(fake_logits))
        total = 0.5 * (loss_real + loss_fake)
        return total, {"d_real": loss_real.item(), "d_fake": loss_fake.item()}
