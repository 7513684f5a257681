"""The start every training command shares: the run folder's claim, ``--max-steps``, the device, torchrun.

``train segmenter``, ``train generator`` and ``train translator`` begin the same way; this is that
beginning, in one place, so a run folder is claimed, an override is validated and a device is
picked identically for all.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Callable, TypeVar

import torch

from medgen import distributed
from medgen.config import with_value
from medgen.io.outdir import claim_run_dir
from medgen.runtime import resolve_device

__all__ = ["start_training", "holds_run_folder"]

C = TypeVar("C")
F = TypeVar("F", bound=Callable)


def holds_run_folder(argument: str, command: str) -> Callable[[F], F]:
    """Decorate a training function so it runs holding its run folder (:func:`medgen.io.outdir.claim_run_dir`).

    ``argument`` names the function's run-folder parameter. The claim (lock + run marker) is taken
    before any work and released when the function returns or raises. Under torchrun only rank 0
    claims: it alone writes the run folder, and the other ranks must not wait on its lock.
    """
    def decorate(train: F) -> F:
        signature = inspect.signature(train)

        @functools.wraps(train)
        def claimed(*args, **kwargs):
            if distributed.launch_rank() != 0:
                return train(*args, **kwargs)
            with claim_run_dir(signature.bind(*args, **kwargs).arguments[argument], command=command):
                return train(*args, **kwargs)
        return claimed  # type: ignore[return-value]
    return decorate


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
