"""Precision choice: ``auto`` never picks emulated bf16 on a CPU without bf16 instructions."""

from __future__ import annotations

import pytest
import torch

from medgen import runtime
from medgen.errors import MedgenError


def test_auto_precision_follows_the_cpu_flags(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    assert runtime.resolve_precision("auto", cpu) == torch.float32
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    assert runtime.resolve_precision("auto", cpu) == torch.bfloat16
    assert runtime.resolve_precision("fp32", cpu) == torch.float32  # explicit choices are kept
    assert runtime.resolve_precision("bf16", cpu) == torch.bfloat16


def test_forced_bf16_on_a_cpu_without_it_warns_once(monkeypatch, caplog):
    cpu = torch.device("cpu")
    runtime._warn_emulated_bf16.cache_clear()
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    with caplog.at_level("WARNING", logger="medgen.runtime"):
        runtime.resolve_precision("bf16", cpu)
    assert not caplog.records
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="medgen.runtime"):
        assert runtime.resolve_precision("bf16", cpu) == torch.bfloat16  # kept: the user asked for it
        runtime.resolve_precision("bf16", cpu)
    assert [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()] and len(caplog.records) == 1
    runtime._warn_emulated_bf16.cache_clear()


def test_cpu_flags_are_read_from_cpuinfo(monkeypatch, tmp_path):
    import builtins
    real_open = builtins.open
    for flags, expected in (("fpu avx2 fma", False), ("avx2 avx512f avx512_bf16", True), ("amx_bf16 amx_tile", True)):
        text = tmp_path / "cpuinfo"
        text.write_text(f"flags\t\t: {flags}\n")
        monkeypatch.setattr(builtins, "open", lambda p, *a, **k: real_open(text if p == "/proc/cpuinfo" else p, *a, **k))
        assert runtime.cpu_supports_bf16() is expected
        monkeypatch.setattr(builtins, "open", real_open)


def test_fp16_on_cpu_is_one_clear_error():
    with pytest.raises(MedgenError, match="fp16 needs a CUDA GPU"):
        runtime.resolve_precision("fp16", torch.device("cpu"))
