"""The one training loop every trainer shares: steps, logging, validation, checkpoints, resume.

A trainer supplies a :class:`TrainingTask` (networks, optimisers, data and the step itself); this
loop owns everything around it, so the translator, segmenter and generator resume, checkpoint,
log and scale the same way:

* resume restores the task state, the step counter and every RNG from the newest *valid*
  checkpoint (see :mod:`medgen.training.checkpoint`);
* rank 0 alone writes checkpoints, ``metrics.jsonl`` and MLflow metrics (DDP-safe);
* metrics are averaged over ``log_every`` steps and over ranks before they are logged.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from medgen.errors import OutputError
from medgen.progress import progress
from medgen.runtime import rng_state, set_rng_state
from medgen.training import distributed
from medgen.training.checkpoint import load_latest_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


class TrainingTask(Protocol):
    """What a trainer provides to :func:`run_training`."""

    def train_step(self, step: int) -> dict[str, float]:
        """Run one optimisation step; return scalar losses for logging."""

    def validate(self, step: int) -> dict[str, float]:
        """Evaluate (and optionally log pictures); return scalar metrics."""

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: weights, optimisers, schedulers, pools."""

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class LoopSettings:
    max_steps: int
    checkpoint_every: int = 100
    validate_every: int = 100
    log_every: int = 10


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def run_training(task: TrainingTask, run_dir: str | Path, settings: LoopSettings, *, tracker=None,
                 resume: bool = False) -> dict[str, float]:
    """Train ``task`` up to ``settings.max_steps``; return the last validation metrics.

    Raises:
        OutputError: ``run_dir`` already holds checkpoints and ``resume`` is False.
    """
    run_dir = Path(run_dir)
    ckpt_dir = checkpoint_dir(run_dir)
    start_step = 0
    if distributed.is_main_process():
        state = load_latest_checkpoint(ckpt_dir) if (resume or ckpt_dir.exists()) else None
        if state is not None and not resume:
            raise OutputError("already holds a training run's checkpoints", path=run_dir,
                              fix="pass --resume to continue it, or choose a new output folder")
    else:
        state = None
    if resume:
        # every rank loads rank 0's choice so all replicas continue from the same state
        chosen = distributed.broadcast_object(None if state is None else state["step"])
        if chosen is not None:
            state = state if state is not None else load_latest_checkpoint(ckpt_dir)
            task.load_state_dict(state["task"])
            if distributed.is_main_process():
                set_rng_state(state["rng"])
            start_step = int(state["step"])
            log.info("resumed from step %d", start_step)
        else:
            log.info("no checkpoint in %s; starting from scratch", ckpt_dir)
    history_path = run_dir / "metrics.jsonl"
    if distributed.is_main_process():
        _trim_history(history_path, start_step)
    window: dict[str, list[float]] = {}
    last_val: dict[str, float] = {}
    t0 = time.perf_counter()
    bar = progress(total=settings.max_steps, initial=start_step, desc="train", unit="step")
    for step in range(start_step + 1, settings.max_steps + 1):
        for key, value in task.train_step(step).items():
            window.setdefault(key, []).append(float(value))
        bar.update(1)
        is_last = step == settings.max_steps
        if step % settings.log_every == 0 or is_last:
            means = {k: distributed.all_reduce_mean(sum(v) / len(v)) for k, v in window.items()}
            means["steps_per_s"] = (step - start_step) / max(time.perf_counter() - t0, 1e-9)
            window.clear()
            bar.set_postfix({k: f"{v:.3g}" for k, v in list(means.items())[:4]})
            _record(history_path, step, "train", means, tracker)
        if step % settings.validate_every == 0 or is_last:
            last_val = task.validate(step)
            _record(history_path, step, "val", last_val, tracker)
        if step % settings.checkpoint_every == 0 or is_last:
            if distributed.is_main_process():
                save_checkpoint({"task": task.state_dict(), "step": step, "rng": rng_state()}, ckpt_dir, step)
            distributed.barrier()
    bar.close()
    return last_val


def _record(history_path: Path, step: int, phase: str, metrics: dict[str, float], tracker) -> None:
    """Append metrics to ``metrics.jsonl`` and MLflow (rank 0 only)."""
    if not metrics or not distributed.is_main_process():
        return
    history_path.parent.mkdir(parents=True, exist_ok=True)
    with open(history_path, "a") as fh:
        fh.write(json.dumps({"step": step, "phase": phase, **metrics}) + "\n")
    if tracker is not None:
        tracker.log_metrics({f"{phase}/{k}": v for k, v in metrics.items()}, step=step)


def _trim_history(history_path: Path, last_step: int) -> None:
    """Drop rows logged after the checkpoint we resume from (they will be logged again)."""
    if not history_path.exists():
        return
    from medgen.io.atomic import write_text_atomic
    rows = [r for r in read_history(history_path.parent) if r.get("step", 0) <= last_step]
    write_text_atomic(history_path, "".join(json.dumps(r) + "\n" for r in rows))


def read_history(run_dir: str | Path) -> list[dict]:
    """The metrics rows a run has recorded (for loss curves and reports)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a crash
    return rows
