"""DistributedDataParallel plumbing that is a no-op in a single process.

The same command runs on one CPU process, one GPU or many GPUs on many nodes: under ``torchrun``
(``RANK``/``WORLD_SIZE`` set) the process group is initialised with NCCL on GPU and gloo on CPU;
otherwise everything degrades to plain single-process training.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch_rank() -> int:
    """This process's rank as torchrun launched it (``RANK``), readable before the process group exists."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(device: torch.device) -> None:
    """Initialise the process group once, when launched by torchrun."""
    if is_distributed() and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0 alone logs to MLflow, writes checkpoints and exports models."""
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Wrap a module in DDP when distributed; return it unchanged otherwise."""
    if not dist.is_initialized() or not any(p.requires_grad for p in module.parameters()):
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    # broadcast_buffers=False: GAN discriminators run several forwards per step, and re-broadcasting
    # buffers between them breaks autograd; medgen's networks use instance/group norm (no running
    # buffers), so nothing diverges. (torch >= 2.13 deprecates the flag in favour of
    # forward_sync_buffers, which still syncs at init; keep the old one until both versions agree.)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The underlying module of a DDP wrapper (for state dicts and export)."""
    return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module


def broadcast_object(obj):
    """Send rank 0's ``obj`` to every rank (e.g. the resumed step)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_object(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank (rank-local state for checkpoints)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(value: float) -> float:
    """Average a scalar over ranks (metrics logged by rank 0 describe the whole job)."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item()) / world_size()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
