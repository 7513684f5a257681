"""The one training loop every trainer shares: steps, logging, validation, checkpoints, resume.

A trainer supplies a :class:`TrainingTask` (networks, optimisers, data and the step itself); this
loop owns everything around it, so the translator, segmenter and generator resume, checkpoint,
log and scale the same way:

* resume restores the task state, the step counter and every RNG from the newest *valid*
  checkpoint (see :mod:`medgen.training.checkpoint`);
* rank 0 alone writes checkpoints, ``metrics.jsonl`` and MLflow metrics (DDP-safe);
* metrics are averaged over ``log_every`` steps and over ranks before they are logged;
* under DDP every rank's *rank-local* state (its data samplers, image pools and global RNGs, which
  must differ between ranks so that each rank draws different samples) is gathered into rank 0's
  checkpoint and handed back to the same rank on resume. A task names those entries of its
  ``state_dict()`` in an optional ``rank_local_state_keys`` attribute; everything else (weights,
  optimisers, schedulers) is identical on all ranks and saved once.

Debugging aid: with the environment variable ``MEDGEN_DEBUG_PARAM_DUMP=FOLDER`` every rank writes
``FOLDER/rank_<r>.pt`` (the task's flattened state at the last step) when training ends, so a test
or a suspicious user can check that all replicas hold the same weights.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from medgen.errors import OutputError
from medgen.progress import progress
from medgen.runtime import rng_state, seed_everything, set_rng_state
from medgen import distributed
from medgen.training.checkpoint import load_latest_checkpoint, save_checkpoint
from medgen.io.atomic import ensure_writable_dir, write_bytes_atomic, write_text_atomic

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
        check_run_dir(task, run_dir)
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
            if state is None or int(state["step"]) != int(chosen):
                raise OutputError(f"rank {distributed.rank()} cannot read the checkpoint of step {chosen} that rank 0 "
                                  "resumes from", path=ckpt_dir,
                                  fix="put the run folder on a file system shared by all nodes")
            _restore(task, state)
            start_step = int(state["step"])
            log.info("resumed from step %d", start_step)
        else:
            log.info("no checkpoint in %s; starting from scratch", ckpt_dir)
            _decorrelate_rank_rngs()
    else:
        _decorrelate_rank_rngs()
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
            _checkpoint(task, ckpt_dir, step)
    bar.close()
    _debug_param_dump(task, settings.max_steps)
    return last_val


def _rank_local_keys(task) -> tuple[str, ...]:
    return tuple(getattr(task, "rank_local_state_keys", ()) or ())


def _checkpoint(task: TrainingTask, ckpt_dir: Path, step: int) -> None:
    """Rank 0 saves the task state plus every rank's RNGs and rank-local task entries."""
    keys = _rank_local_keys(task)
    full = task.state_dict() if (keys or distributed.is_main_process()) else None
    mine = {"rng": rng_state(), "task": {k: full[k] for k in keys}}
    ranks = distributed.gather_object(mine) if distributed.world_size() > 1 else [mine]
    if distributed.is_main_process():
        save_checkpoint({"task": full, "step": step, "rng": mine["rng"], "ranks": ranks}, ckpt_dir, step)
    distributed.barrier()


def _restore(task: TrainingTask, state: dict) -> None:
    """Load ``state`` into ``task``; this rank takes back its own RNGs and rank-local entries.

    A rank the saved run did not have (resumed with more processes) keeps its freshly seeded
    rank-local entries, so it still draws samples no other rank draws.
    """
    me = distributed.rank()
    saved = state.get("ranks") or [{"rng": state["rng"], "task": {}}]
    task_state = dict(state["task"])
    keys = _rank_local_keys(task)
    if len(saved) != distributed.world_size():
        log.warning("resuming a %d-process run with %d processes: the data order differs from an uninterrupted run",
                    len(saved), distributed.world_size())
    if me < len(saved):
        task_state.update({k: v for k, v in saved[me]["task"].items() if k in keys})
        task.load_state_dict(task_state)
        set_rng_state(saved[me]["rng"])
    else:
        own = task.state_dict()
        task_state.update({k: own[k] for k in keys})
        task.load_state_dict(task_state)
        _decorrelate_rank_rngs()


def _decorrelate_rank_rngs() -> None:
    """Give ranks > 0 their own global RNG streams (dropout, noise) derived from the job's seed.

    Trainers seed every rank alike so that the replicas start from the same weights (DDP also
    broadcasts rank 0's); after that, identical global streams would make every rank draw the
    same noise.
    """
    if distributed.rank() > 0:
        seed_everything(int(torch.initial_seed()) % 2**31 + 7919 * distributed.rank())


def _debug_param_dump(task: TrainingTask, step: int) -> None:
    """``MEDGEN_DEBUG_PARAM_DUMP=FOLDER``: each rank saves its flattened task state (tensors only)."""
    folder = os.environ.get("MEDGEN_DEBUG_PARAM_DUMP")
    if not folder:
        return
    flat = {k: v.detach().cpu().clone() for k, v in flatten_tensors(task.state_dict()).items()}
    buffer = io.BytesIO()
    torch.save({"step": step, "rank": distributed.rank(), "world_size": distributed.world_size(), "state": flat},
               buffer)
    write_bytes_atomic(Path(folder) / f"rank_{distributed.rank()}.pt", buffer.getvalue())


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


def flatten_tensors(state, prefix: str = "") -> dict[str, torch.Tensor]:
    """``{"a.b.0": tensor}`` for every tensor in a nested state dict (lists and tuples included)."""
    flat: dict[str, torch.Tensor] = {}
    if isinstance(state, torch.Tensor):
        flat[prefix] = state
    elif isinstance(state, dict):
        for k, v in state.items():
            flat.update(flatten_tensors(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            flat.update(flatten_tensors(v, f"{prefix}.{i}"))
    return flat


def check_run_dir(task: TrainingTask, run_dir: Path, keep: int = 2) -> None:
    """Fail before training when ``run_dir`` is unwritable or too full for the checkpoints.

    The estimate is the task's state size (weights, optimiser moments, sampler state) times the
    ``keep`` checkpoints kept plus the one being written, plus 32 MiB for logs and samples.
    """
    state_bytes = sum(t.numel() * t.element_size() for t in flatten_tensors(task.state_dict()).values())
    ensure_writable_dir(run_dir, min_free_bytes=(keep + 1) * state_bytes + 32 * 2**20)
