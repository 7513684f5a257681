"""Device, precision and seeding: the runtime choices every trainer and predictor shares."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random

import numpy as np
import torch

from medgen.errors import MedgenError

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available (the rank's local GPU under torchrun), else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise MedgenError("--device cuda was requested but no CUDA GPU is available",
                              fix="use --device cpu or --device auto")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bfloat16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype for ``auto|fp32|bf16|fp16`` on ``device``.

    ``auto`` picks bf16 on GPUs that support it and on CPUs with bf16 instructions, else fp32;
    fp16 is GPU-only.
    """
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        if device.type == "cpu" and not cpu_supports_bf16():
            _warn_emulated_bf16()
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise MedgenError("fp16 needs a CUDA GPU", fix="use --precision bf16 or fp32 on CPU")
        return torch.float16
    if precision != "auto":
        raise MedgenError(f"unknown precision '{precision}'", fix="use auto, fp32, bf16 or fp16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


@functools.cache
def _warn_emulated_bf16() -> None:
    """Once per process: bf16 was asked for on a CPU that can only emulate it."""
    log.warning("bf16 on a CPU without bf16 instructions (AVX512-BF16/AMX) is emulated and runs several times "
                "slower than fp32; use precision auto (fp32 here) unless you are checking bf16 accuracy")


def autocast(device: torch.device, dtype: torch.dtype):
    """An autocast context for ``dtype`` on ``device`` (a no-op context for fp32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG's state, for checkpoints (restored by :func:`set_rng_state`)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             # plain tensors and numbers only, so checkpoints load with weights_only=True
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
