"""Optimiser construction shared by the trainers: fused Adam/AdamW where torch has a kernel for it.

The fused step updates every parameter in one kernel per dtype/device instead of a Python loop of
small tensor ops: about 3x faster than the default step on a 2-core CPU for 8 M parameters
(``bench/translator.py`` measures the whole training step). It computes the same update (the
Adam formula is unchanged; results differ from the loop by float rounding only), so losses and
checkpoints stay comparable; optimiser state dicts load across both.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["adam", "fused_supported"]


def fused_supported(params: list[torch.Tensor]) -> bool:
    """True when every parameter is a floating tensor on CPU or CUDA (where torch has fused Adam)."""
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def adam(params: Iterable[torch.nn.Parameter], *, adamw: bool = False, **kwargs) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` (or ``AdamW``) with ``fused=True`` when supported; ``kwargs`` as torch takes them."""
    params = list(params)
    cls = torch.optim.AdamW if adamw else torch.optim.Adam
    if fused_supported(params):
        return cls(params, fused=True, **kwargs)
    return cls(params, **kwargs)
