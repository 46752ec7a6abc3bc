"""What this machine runs well, checked at run time: whether bfloat16 is a native type here (an
Ampere or later GPU, or a CPU with AVX512-BF16 or AMX), and so what precision ``"auto"`` means
(:func:`resolve_precision`, for training, HoVerNet and synthesis alike), which memory layout trains
a given model faster here (measured once and cached: :func:`fastest_layout`, which both trainers
reach through :func:`measured_layout`), and a one-line description of the machine for benchmark
records. The machines this project runs on differ: on an AVX2-only CPU a
bf16 convolution is about ten times slower than fp32, so bf16 is never chosen where it is emulated
(which includes a CPU whose oneDNN is capped below its bf16 ISA by ``ONEDNN_MAX_CPU_ISA``), and
channels_last, faster on the AVX512 box, trained slower there.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from nasdm_aug.types import LAYOUT_CHOICES, LAYOUTS, PRECISIONS
from nasdm_aug.utils import write_text_atomic

__all__ = ["PRECISIONS", "LAYOUTS", "LAYOUT_CHOICES", "cpu_flags", "onednn_isa_cap", "native_bf16", "precision_name",
           "resolve_precision", "precision_dtype", "resolve_dtype", "memory_format", "median_seconds",
           "resolve_sampling_layout", "describe_machine", "layout_cache_path", "fastest_layout", "measured_layout",
           "optimizer_step"]

# the torch dtype names synthesis took before it spoke in PRECISIONS (its old ``dtype`` and
# ``--dtype``); still read in configs, banks and interrupted runs written then
_DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16"}
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# oneDNN's CPU ISA names in ascending order (``dnnl::cpu_isa``); its bf16 convolutions run on
# dot-product instructions from AVX512_CORE_BF16 on. Below that they are emulated: measured on an
# AVX512-BF16 CPU capped at AVX2, a bf16 3x3 conv ran at 16 GFLOP/s against 112 in fp32.
_ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
                "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10_1_512_AMX",
                "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16", "DEFAULT", "ALL")
_ONEDNN_BF16_ISA = _ONEDNN_ISAS.index("AVX512_CORE_BF16")


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


def onednn_isa_cap() -> str | None:
    """The CPU ISA oneDNN (PyTorch's CPU convolutions) is capped at by ``ONEDNN_MAX_CPU_ISA`` (or its
    older name ``DNNL_MAX_CPU_ISA``), upper-cased; None where neither is set."""
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(var, "").strip()
        if value:
            return value.upper()
    return None


def native_bf16(device: torch.device | str) -> bool:
    """Whether bfloat16 arithmetic is native on ``device`` (not emulated).

    On a CUDA GPU: compute capability 8.0 or later (Ampere on), which excludes a T4 or V100.

    On a CPU: AVX512-BF16 or AMX in its flags, and oneDNN not capped (:func:`onednn_isa_cap`) below
    AVX512_CORE_BF16, the ISA its bf16 kernels need. A value not in oneDNN 3's list of ISA names
    is taken as no cap."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        if torch.version.hip:  # ROCm: as torch.cuda.is_bf16_supported, every architecture
            return True
        # Ampere (compute capability 8) and later have bf16 tensor cores. Not
        # torch.cuda.is_bf16_supported(): by default it also says yes where bf16 is only emulated
        # (a T4 or V100), and it asks about the current device, not this one.
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_properties(index).major >= 8
    if device.type == "cpu":
        cap = onednn_isa_cap()
        if cap in _ONEDNN_ISAS and _ONEDNN_ISAS.index(cap) < _ONEDNN_BF16_ISA:
            return False
        return any(f in cpu_flags() for f in _BF16_CPU_FLAGS)
    return False


def precision_name(name: str) -> str:
    """``name`` as a word of ``PRECISIONS``: those as they are, and the torch dtype names synthesis
    took before (``"float32"`` -> ``"fp32"``, ``"bfloat16"`` -> ``"bf16"``).

    Raises:
        ValueError: another name.
    """
    if name in PRECISIONS:
        return name
    if name in _DTYPE_NAMES:
        return _DTYPE_NAMES[name]
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")


def resolve_precision(name: str, device: torch.device | str, recorded: str | None = None) -> str:
    """``"fp32"`` or ``"bf16"``: ``name`` as given; for ``"auto"`` the precision a run started in
    (``recorded``, when it is one), else ``"bf16"`` where bf16 is native on ``device``
    (:func:`native_bf16`) and ``"fp32"`` elsewhere. Training, HoVerNet and synthesis all resolve
    ``"auto"`` here.

    Raises:
        ValueError: a name not in ``PRECISIONS``.
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    if name != "auto":
        return name
    if recorded in ("fp32", "bf16"):
        return recorded
    return "bf16" if native_bf16(device) else "fp32"


def precision_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a resolved precision: ``torch.bfloat16`` for ``"bf16"``, else ``torch.float32``."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """The torch dtype of :func:`resolve_precision` for ``name`` (a precision, or a torch dtype name
    :func:`precision_name` reads).

    Raises:
        ValueError: another name.
    """
    return precision_dtype(resolve_precision(precision_name(name), device))


def memory_format(layout: str) -> torch.memory_format:
    """The torch memory format of a layout name in ``LAYOUTS``.

    Raises:
        ValueError: another name.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def resolve_sampling_layout(name: str, device: torch.device | str) -> str:
    """The memory layout sampling runs in: ``"channels_last"`` / ``"contiguous"`` as asked;
    ``"auto"``: contiguous (NCHW) on a CUDA GPU, channels_last on any other device (a CPU).

    Why this rule: PyTorch's group norm keeps channels_last only on a CPU; on CUDA it copies its
    input to NCHW (``group_norm`` in ATen), so a channels_last U-Net, which norms before nearly
    every convolution, pays a layout copy at each norm there. On the AVX512 CPU measured,
    channels_last sampled 1.22-1.56x faster than NCHW with the same patches (benchmarks/RESULTS.md,
    "Synthesis: every combination of layout, dtype and compile"). Why not timed like the trainers' ``fastest_layout``: that
    times throwaway copies of a training step, not sampling, and a fixed rule needs no second copy
    of the models and gives every rank of a job the same answer.

    Raises:
        ValueError: a name not in ``LAYOUT_CHOICES``.
    """
    if name not in LAYOUT_CHOICES:
        raise ValueError(f"layout must be one of {', '.join(LAYOUT_CHOICES)}, got {name!r}")
    if name != "auto":
        return name
    return "contiguous" if torch.device(device).type == "cuda" else "channels_last"


def describe_machine() -> str:
    """``<CPU model> (<torch CPU capability>[, oneDNN ISA capped at <ISA>], bf16 native|emulated), torch
    <version>[, <GPU>]``. A cap changes which kernels run, so it is part of the description (and so
    of the layout cache's key)."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    bf16 = "bf16 native" if native_bf16("cpu") else "bf16 emulated"
    cap = onednn_isa_cap()
    capped = f", oneDNN ISA capped at {cap}" if cap else ""
    out = f"{model} ({torch.backends.cpu.get_cpu_capability()}{capped}, {bf16}), torch {torch.__version__}"
    if torch.cuda.is_available():
        out += f", {torch.cuda.get_device_name()}"
    return out


def layout_cache_path() -> Path:
    """Where :func:`fastest_layout` keeps its measurements: ``$NASDM_AUG_CACHE/layouts.json``, else
    ``$XDG_CACHE_HOME/nasdm-aug/layouts.json`` (``~/.cache`` when unset)."""
    base = os.environ.get("NASDM_AUG_CACHE")
    if not base:
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "nasdm-aug")
    return Path(base) / "layouts.json"


def _read_cache(path: Path) -> dict:
    """The cached measurements, or an empty dict where the file is missing or not ours."""
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _error_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def median_seconds(fn: Callable[[], object], device: torch.device | str, warmup: int = 1, repeats: int = 3) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones, the
    device synchronised around each, so a CUDA call is timed to its end, not its launch."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


def fastest_layout(key: str, make_step: Callable[[torch.memory_format], Callable[[], object]],
                   device: torch.device | str = "cpu", repeats: int = 3) -> tuple[str, dict[str, float]]:
    """The faster memory layout for a training step on ``device``, measured there once and cached,
    one layout at a time.

    ``make_step(memory_format)`` builds a throwaway copy of the step (model, optimizer and a batch
    in that layout) and returns a function that runs one step. The result is cached in
    :func:`layout_cache_path` under ``key`` and this machine's description, CPU threads and device,
    so a later run of the same model on the same machine reuses it without timing. Each
    layout's throwaway step is built, run once untimed, timed ``repeats`` times and dropped (with
    its model copy, gradients and optimizer state, and the CUDA cache emptied) before the next is
    built: at most one copy lives beside the training model, where two copies of the 500M-parameter
    ``paper`` model with their AdamW state would take about 16 GB. A layout that runs out of memory
    is skipped and channels_last is chosen; one warning says so, and the cache entry keeps why
    (``"out_of_memory"``: {layout: error}).

    Returns:
        (layout name in ``LAYOUTS``, {layout: median seconds per step} of the layouts that ran).
    """
    device = torch.device(device)
    full_key = f"{describe_machine()} | threads={torch.get_num_threads()} | {device} | {key}"
    path = layout_cache_path()
    cache = _read_cache(path)
    hit = cache.get(full_key)
    if isinstance(hit, dict) and hit.get("layout") in LAYOUTS and isinstance(hit.get("seconds"), dict):
        return hit["layout"], dict(hit["seconds"])
    seconds: dict[str, float] = {}
    out_of_memory: dict[str, str] = {}
    for name in LAYOUTS:
        step = None
        try:
            step = make_step(memory_format(name))
            # one warm-up call: allocator, cuDNN / oneDNN algorithm choice
            seconds[name] = median_seconds(step, device, warmup=1, repeats=repeats)
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one
            if not _is_oom(exc):
                raise
            # kept as a line: the exception's traceback would keep the failed step's tensors alive
            out_of_memory[name] = _error_line(exc)
        finally:
            del step
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if out_of_memory:
        best = "channels_last"
        warnings.warn(f"layout timing on {device}: {'; '.join(f'{k} ran out of memory ({v})' for k, v in out_of_memory.items())}"
                      "; training in channels_last", stacklevel=2)
    else:
        best = min(seconds, key=seconds.__getitem__)
    entry: dict[str, Any] = {"layout": best, "seconds": seconds}
    if out_of_memory:
        entry["out_of_memory"] = out_of_memory
    cache[full_key] = entry
    try:  # a cache that cannot be written costs a new measurement next time, nothing else
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(cache, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass
    return best, seconds


def measured_layout(key: str, make_step: Callable[[torch.memory_format], Callable[[], object]],
                    device: torch.device | str) -> str:
    """The layout :func:`fastest_layout` picks for ``make_step`` on ``device`` (measured once and
    cached), timed under a forked RNG, so the caller's run (its weights, noise and data order) is
    the same whichever layout wins. Both trainers choose their ``"auto"`` layout with it."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return fastest_layout(key, make_step, device)[0]


def optimizer_step(loss: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """A function that runs one full training step, for timing: ``loss()`` (forward and loss), then
    the gradients zeroed, the backward pass and ``optimizer.step()``. Both trainers' ``timing_step``
    return one."""
    def step() -> None:
        value = loss()
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
    return step
