"""Per-tissue intensity matching for G(MR): each tissue of the synthetic CT at its real-CT level.

Why: an unpaired translator can meet the adversarial, cycle and histogram terms with a
low-contrast synthetic CT whose tissues sit at the wrong HU (in the phantom demo: fat at about
-10 HU instead of -120, the aorta darker than muscle). The global histogram term cannot see that
(the pooled values can still match in distribution), and the discriminator sees too little of
each tissue to insist. What pins it down is knowing *which* tissue a voxel is: a frozen CT
segmenter S (the one the user wants to run on the synthetic CT, already used by the shape term)
says so on both sides.

The term, for a batch of synthetic CT ``G(x)`` and an unpaired real CT batch ``y``:

1. reference levels: S's class probabilities on ``y`` (inside its body mask) weight y's
   intensities; running sums over batches (an exponential moving average of the weighted sums
   and of the weights, so their ratio is an unbiased mean from the first batch) give each
   class's mean real-CT intensity ``mu_c``;
2. S's class probabilities on ``G(x)`` (detached: G cannot lower the term by confusing S, only
   by moving intensities) weight ``G(x)`` inside the MR body mask to a soft class mean ``m_c``;
3. the loss is the mean over classes present on both sides of ``|m_c - mu_c|`` (every tissue
   counts the same, like a Dice average; rare ones are not drowned by fat and muscle).

The gradient moves all voxels S assigns to a class together, towards the class's real level:
it corrects polarity errors such as bright fat, which a voxel-wise or pooled term does not.
S must be robust to intensity errors for this to start (train it with the per-label intensity
shift, ``augment.label_shift``); a class it cannot find in G(x) simply gets no say.

Examples:
    >>> import torch
    >>> seg = lambda x: torch.cat([-x, x], 1) * 200                # class 1 where x > 0
    >>> term = ClassIntensityMatch(seg, momentum=0.0, min_mass=0.5)
    >>> real = torch.tensor([[[-0.5, 0.6]]])                     # class 0 at -0.5, class 1 at 0.6
    >>> fake = torch.tensor([[[-0.1, 0.1]]], requires_grad=True)
    >>> round(float(term(fake, real).detach()), 3)                      # (|-0.1+0.5| + |0.1-0.6|) / 2
    0.45
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["ClassIntensityMatch"]


class ClassIntensityMatch(nn.Module):
    """The per-class mean-intensity term (see the module docstring).

    Args:
        segmenter: frozen ``batch -> logits`` with the class axis at 1 and the batch's spatial
            layout after it (e.g. :class:`medgen.objectives.shape.TranslatorSpaceSegmenter`).
        momentum: EMA factor of the real-CT reference sums (0: the current batch only).
        min_mass: a class needs at least this many (soft) voxels in the batch to be scored.
    """

    def __init__(self, segmenter: nn.Module | Callable, *, momentum: float = 0.99, min_mass: float = 16.0):
        super().__init__()
        self.segmenter = segmenter
        self.momentum = float(momentum)
        self.min_mass = float(min_mass)
        self.ref_mass: torch.Tensor | None = None   # (K,) EMA of the class weights in real CT
        self.ref_sum: torch.Tensor | None = None    # (K,) EMA of the weighted intensities

    @torch.no_grad()
    def _class_weights(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """S's class probabilities (B, K, ...) on ``x``, zero outside ``mask``."""
        logits = self.segmenter(x)
        logits = logits[0] if isinstance(logits, (list, tuple)) else logits
        p = torch.softmax(logits.float(), dim=1)
        if mask is not None:
            p = p * _class_aligned(mask.float(), p)
        return p

    @staticmethod
    def _sums(p: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class soft voxel count and weighted intensity sum."""
        dims = [0] + list(range(2, p.ndim))
        return p.sum(dims), (p * _class_aligned(x.float(), p)).sum(dims)

    @torch.no_grad()
    def update_reference(self, real_ct: torch.Tensor, ct_mask: torch.Tensor | None = None) -> None:
        """Fold a real CT batch into the per-class reference levels."""
        mass, total = self._sums(self._class_weights(real_ct, ct_mask), real_ct)
        if self.ref_mass is None or self.ref_mass.shape != mass.shape:
            self.ref_mass, self.ref_sum = torch.zeros_like(mass), torch.zeros_like(total)
        m = self.momentum
        self.ref_mass = m * self.ref_mass + (1 - m) * mass
        self.ref_sum = m * self.ref_sum + (1 - m) * total

    def reference_levels(self) -> torch.Tensor | None:
        """The current mean real-CT intensity per class (NaN for classes never seen)."""
        if self.ref_mass is None:
            return None
        return torch.where(self.ref_mass > 0, self.ref_sum / self.ref_mass.clamp_min(1e-12),
                           torch.full_like(self.ref_sum, float("nan")))

    def forward(self, fake_ct: torch.Tensor, real_ct: torch.Tensor, fake_mask: torch.Tensor | None = None,
                real_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Update the reference with ``real_ct``, then score ``fake_ct`` against it (differentiable
        in ``fake_ct``)."""
        self.update_reference(real_ct, real_mask)
        p = self._class_weights(fake_ct.detach(), fake_mask)
        mass, total = self._sums(p, fake_ct)
        reference = self.reference_levels()
        scored = (mass >= self.min_mass) & torch.isfinite(reference)
        if not bool(scored.any()):
            return fake_ct.float().sum() * 0.0
        means = total[scored] / mass[scored]
        return (means - reference[scored]).abs().mean()

    def state_dict_for_resume(self) -> dict:
        """The reference sums (so a resumed run continues bit-for-bit)."""
        return {"ref_mass": self.ref_mass, "ref_sum": self.ref_sum}

    def load_state_dict_for_resume(self, state: dict) -> None:
        self.ref_mass, self.ref_sum = state.get("ref_mass"), state.get("ref_sum")


def _class_aligned(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``x`` laid out to broadcast against class probabilities ``p`` (B, K, ...): a 2.5D stack
    (B, C, X, Y) with logits (B, K, C, X, Y) gains a class axis; a one-channel batch (B, 1, ...)
    with logits (B, K, ...) broadcasts as it is."""
    if x.ndim == p.ndim - 1:
        return x.unsqueeze(1)
    if x.ndim == p.ndim and x.shape[1] == 1:
        return x
    raise ValueError(f"batch of shape {tuple(x.shape)} does not match segmenter output {tuple(p.shape)}")
