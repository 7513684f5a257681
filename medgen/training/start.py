"""The start every training command shares: ``--max-steps``, the run folder, the device, torchrun.

``train segmenter``, ``train generator`` and ``train translator`` begin the same way; this is that
beginning, in one place, so an override is validated and a device is picked identically for all.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import torch

from medgen import distributed
from medgen.config import with_value
from medgen.runtime import resolve_device

__all__ = ["start_training"]

C = TypeVar("C")


def start_training(config: C, run_dir: str | Path, *, device: str = "auto",
                   max_steps: int | None = None) -> tuple[C, Path, torch.device]:
    """Apply ``max_steps``, create ``run_dir``, resolve ``device`` and join torchrun's process group.

    Args:
        config: a training config with ``train.steps``.
        run_dir: the run folder (created).
        device: ``auto``, ``cpu``, ``cuda``...
        max_steps: overrides ``train.steps`` (validated like ``--set train.steps``: at least 1).

    Returns:
        ``(config, run_dir, device)``: the config with the override applied, the folder as a Path.
    """
    if max_steps is not None:
        config = with_value(config, "train.steps", max_steps, source="--max-steps")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    distributed.init_distributed(dev)
    return config, run_dir, dev
