"""Exponential moving average (EMA) of a network's weights, for exporting a steadier generator.

GAN generators oscillate from step to step (the discriminator keeps moving the target), so the
weights at the last step are one noisy sample of a drifting model. Averaging them,
``ema <- decay * ema + (1 - decay) * current`` after every optimiser step, gives a generator whose
outputs change slowly and are usually better than any single step's (the practice of
progressive GAN, StyleGAN and most diffusion models). ``decay`` 0.999 averages over about the last
1000 steps; buffers (e.g. norm statistics) are copied, not averaged.

Early in training the average would be dominated by the random initialisation, so the effective
decay is warmed up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates.
"""

from __future__ import annotations

import copy

import torch

__all__ = ["WeightEMA"]


class WeightEMA:
    """An EMA copy of ``net`` (kept in eval mode, never trained directly)."""

    def __init__(self, net: torch.nn.Module, decay: float = 0.999):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(net).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, net: torch.nn.Module) -> None:
        """Blend the current weights of ``net`` into the average."""
        self.updates += 1
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for avg, cur in zip(self.module.parameters(), net.parameters()):
            avg.lerp_(cur.detach().to(avg.dtype), 1.0 - decay)
        for avg, cur in zip(self.module.buffers(), net.buffers()):
            avg.copy_(cur)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
