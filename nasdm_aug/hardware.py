"""What this machine runs natively, checked at run time: whether bfloat16 is a native type here
(a GPU that supports it, or a CPU with AVX512-BF16 or AMX), and a one-line description of the
machine for benchmark records. The machines this project runs on differ: on an AVX2-only CPU a
bf16 convolution is about ten times slower than fp32, so bf16 is never chosen where it is emulated.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

__all__ = ["DTYPES", "LAYOUTS", "cpu_flags", "native_bf16", "resolve_dtype", "memory_format", "describe_machine"]

DTYPES = ("float32", "bfloat16", "auto")
# how sampling lays tensors out; channels_last sampled 1.25-1.52x faster than NCHW with the same
# patches on the AVX512 box (benchmarks/RESULTS.md, Synthesis: channels_last and bf16)
LAYOUTS = ("channels_last", "contiguous")
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(device: torch.device | str) -> bool:
    """Whether bfloat16 arithmetic is native on ``device`` (not emulated)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return any(f in cpu_flags() for f in _BF16_CPU_FLAGS)
    return False


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` as asked; ``"auto"``: bfloat16 where it is native, else float32.

    Raises:
        ValueError: another name.
    """
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return torch.bfloat16 if name == "bfloat16" else torch.float32


def memory_format(layout: str) -> torch.memory_format:
    """The torch memory format of a layout name in ``LAYOUTS``.

    Raises:
        ValueError: another name.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def describe_machine() -> str:
    """``<CPU model> (<torch CPU capability>, bf16 native|emulated), torch <version>[, <GPU>]``."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    bf16 = "bf16 native" if native_bf16("cpu") else "bf16 emulated"
    out = f"{model} ({torch.backends.cpu.get_cpu_capability()}, {bf16}), torch {torch.__version__}"
    if torch.cuda.is_available():
        out += f", {torch.cuda.get_device_name()}"
    return out
