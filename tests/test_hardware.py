"""bf16 is chosen only where the machine runs it natively; layouts and dtypes by name."""

from __future__ import annotations

import pytest
import torch

import nasdm_aug.hardware as hw


@pytest.mark.parametrize("flags, native", [({"avx2", "avx512f"}, False), ({"avx512f", "avx512_bf16"}, True),
                                           ({"amx_bf16", "amx_tile"}, True), (set(), False)])
def test_auto_dtype_is_bf16_only_where_native(monkeypatch, flags, native):
    monkeypatch.setattr(hw, "cpu_flags", lambda: frozenset(flags))
    assert hw.native_bf16("cpu") is native
    assert hw.resolve_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)
    assert hw.resolve_dtype("float32", "cpu") == torch.float32 and hw.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert ("bf16 native" if native else "bf16 emulated") in hw.describe_machine()


def test_names_are_checked():
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, auto, got 'fp16'"):
        hw.resolve_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match="layout must be one of channels_last, contiguous"):
        hw.memory_format("nhwc")
    assert hw.memory_format("channels_last") == torch.channels_last
    assert hw.memory_format("contiguous") == torch.contiguous_format


def test_this_machines_flags_are_read():
    flags = hw.cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags on this machine")
    assert hw.native_bf16("cpu") == bool({"avx512_bf16", "amx_bf16"} & flags)
