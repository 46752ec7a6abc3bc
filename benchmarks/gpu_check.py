"""The prepared GPU check: one command, one table, one JSON file, for a machine with a GPU.

    .venv/bin/python benchmarks/gpu_check.py [--json gpu_check.json] [--device cuda]
    .venv/bin/python benchmarks/gpu_check.py --smoke      # CPU, tiny sizes: what make test runs

It measures, with randomly initialised networks (speed and memory do not depend on the weights):
- the ``paper`` patch and mask presets' training step (hybrid loss, backward, fused AdamW, bf16
  autocast where the device runs bf16 natively): samples/s and peak memory at batch 8, and at the
  largest batch that runs (doubling from 8 until ``--max-batch`` or the first error, out of memory
  or any other, recorded as ``largest_stopped_by``);
- sampling at 50 guided steps (``NASDMGenerator.generate_patches``, DDPM, guidance 2) at batch 32 and
  at the largest sampling batch that fits (up to ``--max-sample-batch``), eager;
- mask sampling at 50 guided steps, batch 32 (the first half of a bank made from generated masks);
- the HoVerNet ``paper`` preset's phase-2 training step at its batch (16);
- last, patch sampling through ``torch.compile`` at the same batches as eager (``--no-compile`` skips it),
  and whether the compiled networks sample the eager patches (same weights, masks and seeds) up to
  rounding: ``compiled_matches_eager``, with the largest and mean grey-level difference;
- the projected wall time of the paper's S2 bank (8,639 patches: masks then patches, each at the
  faster measured sampling rate).

Each section runs on its own: one that fails is recorded as one line (``"error"``) and the others
still run, and the JSON is rewritten after each, so a run stopped at a time limit keeps what it
measured. ``benchmarks/gpu_check_offline.sh`` runs it on a GPU node without a package index.

Under ``--smoke`` everything runs on the CPU with the ``tiny`` presets at 32 px, a few steps and no
compile (``--smoke --compile`` keeps it), so the script is exercised by ``make test``
(tests/test_gpu_check.py) and cannot rot; its numbers mean nothing. The full run is sized for
under 8 minutes on one large GPU: compiling the patch U-Net for two batch shapes is most of it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nasdm_aug.hardware import describe_machine, median_seconds, memory_format, native_bf16, resolve_sampling_layout  # noqa: E402

S2_PATCHES = 8639  # the paper's S2 bank (NASDM, Table 3)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def largest_batch(try_batch: Callable[[int], Any], start: int, limit: int,
                  device: torch.device) -> tuple[int, str | None]:
    """The largest batch in start, 2 start, 4 start ... <= limit for which ``try_batch`` runs, and
    what stopped the search (``"batch B: Type: first line of the error"``; None when it reached ``limit``).

    Any error at a batch ends the doubling, not only out of memory: a huge batch can also fail as
    an unsupported kernel configuration or 32-bit indexing overflow, and the batches below it still
    count. When ``start`` itself fails, the search halves down to 1 (0: none ran)."""
    best, batch, stopped = 0, start, None
    while 1 <= batch <= limit:
        _peak_reset(device)
        try:
            try_batch(batch)
        except Exception as exc:
            # nothing at or above a failed batch is tried again; below start, halve until one runs
            stopped, limit = f"batch {batch}: {_error_line(exc)}", batch - 1
            batch = batch // 2 if best == 0 else limit + 1
        else:
            best, batch = batch, batch * 2
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return best, stopped


# -- NASDM training -------------------------------------------------------------------------------
def nasdm_step(kind: str, preset: str, size: int, n_types: int, batch: int, device: torch.device,
               bf16: bool) -> Callable[[], None]:
    """One full training step of the ``kind`` model (the trainer's ``timing_step``) on a random batch."""
    from nasdm_aug.nets import build_model
    from nasdm_aug.training.config import get_train_preset
    from nasdm_aug.training.trainer import timing_step

    cfg = get_train_preset(kind, preset, n_types=n_types, image_size=size)
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    x = torch.randn(batch, cfg.model.in_channels, size, size, device=device)
    if kind == "patch":
        cond = torch.rand(batch, cfg.model.cond_channels, size, size, device=device)
    else:
        cond = (torch.rand(batch, n_types, device=device) > 0.5).float()
    # the layout sampling's "auto" takes on this device (NCHW on CUDA, whose group norm works in NCHW):
    # the trainers' "auto" would time both layouts on two more copies of the paper model
    fmt = memory_format(resolve_sampling_layout("auto", device))
    return timing_step(model, cfg.diffusion.build(), x, cond, fmt, bf16=bf16, lr=cfg.lr)


def measure_training(kind: str, args: argparse.Namespace, device: torch.device, bf16: bool) -> dict[str, Any]:
    def run(batch: int, repeats: int) -> dict[str, Any]:
        _peak_reset(device)
        seconds = median_seconds(nasdm_step(kind, args.preset, args.size, args.n_types, batch, device, bf16), device,
                         warmup=1, repeats=repeats)
        return {"batch": batch, "samples_per_s": batch / seconds, "peak_gib": _peak_gib(device)}

    out = {"at_8": run(args.train_batch, args.repeats)}
    biggest, stopped = largest_batch(lambda b: nasdm_step(kind, args.preset, args.size, args.n_types, b, device, bf16)(),
                                     args.train_batch, args.max_batch, device)
    if stopped is not None:
        out["largest_stopped_by"] = stopped
    out["largest"] = run(biggest, args.repeats) if biggest > args.train_batch else out["at_8"]
    return out


# -- sampling ---------------------------------------------------------------------------------------
def _generator(args: argparse.Namespace, device: torch.device, bf16: bool, compile: bool):
    from nasdm_aug.generator import NASDMGenerator
    from nasdm_aug.nets import build_model
    from nasdm_aug.training.config import get_train_preset
    from nasdm_aug.types import LIZARD

    torch.manual_seed(0)
    configs = {k: get_train_preset(k, args.preset, n_types=LIZARD.n_types, image_size=args.size) for k in ("mask", "patch")}
    models = {k: build_model(c.model) for k, c in configs.items()}
    return NASDMGenerator(models["patch"], configs["patch"], LIZARD, models["mask"], configs["mask"], device=device,
                          dtype=torch.bfloat16 if bf16 else torch.float32, layout="auto", compile=compile)


def _disk_masks(n: int, size: int, n_types: int) -> tuple[np.ndarray, np.ndarray]:
    """n masks of about 12 disk nuclei each, random types: what the patch model is conditioned on."""
    rng = np.random.default_rng(0)
    inst = np.zeros((n, size, size), np.int32)
    typ = np.zeros((n, size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        for k in range(1, 13):
            cy, cx, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(3, max(4, size // 16)))]
            disk = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (inst[i] == 0)
            inst[i][disk], typ[i][disk] = k, rng.integers(1, n_types + 1)
    return inst, typ


def _patch_rate(gen, batch: int, args: argparse.Namespace, device: torch.device) -> float:
    """Patches/s of ``gen`` at ``batch`` and 50 (``args.sample_steps``) guided DDPM steps."""
    from nasdm_aug.sampling import SamplerOptions

    inst, typ = _disk_masks(batch, args.size, gen.type_table.n_types)
    gen.generate_patches(inst, typ, sampling=SamplerOptions("ddpm", steps=1), guidance=2.0, batch_size=batch)
    _sync(device)  # the first call compiles (compile=True) and warms up; it is not timed
    t0 = time.perf_counter()
    gen.generate_patches(inst, typ, sampling=SamplerOptions("ddpm", steps=args.sample_steps), guidance=2.0,
                         batch_size=batch)
    _sync(device)
    return batch / (time.perf_counter() - t0)


def _sampling_batches(args: argparse.Namespace, largest: int) -> list[int]:
    """The batches sampling is timed at, eager and compiled: ``args.sample_batch`` and the largest that fits."""
    return sorted({args.sample_batch, max(largest, args.sample_batch)})


def measure_sampling(args: argparse.Namespace, device: torch.device, bf16: bool) -> dict[str, Any]:
    """Eager patch sampling at ``args.sample_batch`` and at the largest batch that fits, and mask sampling."""
    from nasdm_aug.sampling import SamplerOptions

    out: dict[str, Any] = {}
    eager = _generator(args, device, bf16, compile=False)
    n_types = eager.type_table.n_types
    biggest, stopped = largest_batch(lambda b: eager.generate_patches(*_disk_masks(b, args.size, n_types),
                                                                      sampling=SamplerOptions("ddpm", steps=1),
                                                                      guidance=2.0, batch_size=b),
                                     args.sample_batch, args.max_sample_batch, device)
    if stopped is not None:
        out["largest_sampling_batch_stopped_by"] = stopped
    for b in _sampling_batches(args, biggest):
        out[f"patch_eager_b{b}"] = _patch_rate(eager, b, args, device)
    _sync(device)
    t0 = time.perf_counter()
    eager.generate_masks("random", args.sample_batch, sampling=SamplerOptions("ddpm", steps=args.sample_steps),
                         guidance=2.0, batch_size=args.sample_batch)
    _sync(device)
    out[f"mask_eager_b{args.sample_batch}"] = args.sample_batch / (time.perf_counter() - t0)
    out["largest_sampling_batch"] = biggest
    return out


def measure_sampling_compiled(args: argparse.Namespace, device: torch.device, bf16: bool,
                              batches: list[int]) -> dict[str, Any]:
    """Patch sampling through ``torch.compile`` at the eager section's batches. It runs last: compiling
    is the slowest part of the check, and a run stopped at a time limit loses only these rows."""
    from nasdm_aug.sampling import SamplerOptions

    comp = _generator(args, device, bf16, compile=True)
    out: dict[str, Any] = {f"patch_compiled_b{b}": _patch_rate(comp, b, args, device) for b in batches}
    # the compiled networks must sample the eager patches (same weights, masks and seeds) up to rounding
    eager = _generator(args, device, bf16, compile=False)
    masks = _disk_masks(2, args.size, eager.type_table.n_types)
    opts = dict(sampling=SamplerOptions("ddpm", steps=min(args.sample_steps, 10)), guidance=2.0, seed=1)
    a = eager.generate_patches(*masks, **opts).astype(np.int16)
    b = comp.generate_patches(*masks, **opts).astype(np.int16)
    diff = np.abs(a - b)
    out.update(compiled_vs_eager_max_abs=int(diff.max()), compiled_vs_eager_mean_abs=float(diff.mean()),
               compiled_matches_eager=bool(diff.mean() <= 1.0))  # grey levels: rounding moves a few pixels by 1-2
    return out


# -- HoVerNet -------------------------------------------------------------------------------------
def measure_hovernet(args: argparse.Namespace, device: torch.device, bf16: bool) -> dict[str, Any]:
    from hovernet.config import get_hovernet_preset
    from hovernet.trainer import timing_step

    cfg = get_hovernet_preset(args.hovernet_preset)
    cfg = cfg.replace(model=cfg.model.replace(n_types=6), precision="bf16" if bf16 else "fp32",
                      batch_size=2 if args.smoke else cfg.batch_size)
    torch.manual_seed(0)
    step = timing_step(cfg, device, (3, args.size, args.size), torch.channels_last)
    _peak_reset(device)
    seconds = median_seconds(step, device, warmup=1, repeats=args.repeats)
    return {"batch": cfg.batch_size, "patches_per_s": cfg.batch_size / seconds, "peak_gib": _peak_gib(device)}


def _fmt_mem(g: float | None) -> str:
    return "-" if g is None else f"{g:.1f} GiB"


def _error_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def _write_json(res: dict[str, Any], path: str | os.PathLike) -> None:
    """Atomically (re)write the results so far: a run killed at its time limit keeps what it measured."""
    path = Path(path)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".partial")
    tmp.write_text(json.dumps(res, indent=1, default=lambda o: None if isinstance(o, float) and math.isnan(o) else o))
    tmp.replace(path)


def _print_table(res: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"machine: {res['machine']}; device {res['device']}; {'bf16' if res['bf16'] else 'fp32'}; preset "
          f"{args.preset}, {args.size} px{' (SMOKE: numbers mean nothing)' if args.smoke else ''}")
    print("| what | batch | rate | peak memory |")
    print("|---|---|---|---|")
    for kind in ("patch", "mask"):
        sec = res.get(f"train_{kind}", {})
        if "error" in sec:
            print(f"| {kind} model training step | - | failed: {sec['error']} | - |")
        for key in ("at_8", "largest"):
            if key in sec:
                r = sec[key]
                print(f"| {kind} model training step | {r['batch']} | {r['samples_per_s']:.1f} samples/s | "
                      f"{_fmt_mem(r['peak_gib'])} |")
    for sec, what in (("sampling", "sampling"), ("sampling_compiled", "patch sampling, compiled")):
        samp = res.get(sec, {})
        if "error" in samp:
            print(f"| {what} | - | failed: {samp['error']} | - |")
        for key, rate in samp.items():
            if key.startswith(("patch_", "mask_")):
                kind, mode, b = key.split("_")
                print(f"| {kind} sampling, {args.sample_steps} guided steps, {mode} | {b[1:]} | {rate:.2f} patches/s "
                      "| - |")
    comp = res.get("sampling_compiled", {})
    if "compiled_matches_eager" in comp:
        print(f"| compiled patches against eager ones (same seeds) | 2 | max {comp['compiled_vs_eager_max_abs']}, mean "
              f"{comp['compiled_vs_eager_mean_abs']:.3f} grey levels: {'same' if comp['compiled_matches_eager'] else 'DIFFERENT'} | - |")
    h = res.get("hovernet", {})
    if "error" in h:
        print(f"| HoVerNet {args.hovernet_preset} phase-2 step | - | failed: {h['error']} | - |")
    elif h:
        print(f"| HoVerNet {args.hovernet_preset} phase-2 step | {h['batch']} | {h['patches_per_s']:.1f} patches/s | "
              f"{_fmt_mem(h['peak_gib'])} |")
    hours = res.get("s2_bank_projected_hours")
    print(f"| S2 bank ({S2_PATCHES} patches), projected | - | "
          f"{'-' if hours is None else f'{hours:.2f} h'} | - |")
    print(f"({res['seconds']:.0f} s in all)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cuda (default when there is one), cuda:1, or cpu")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny presets at 32 px, few steps, no compile")
    ap.add_argument("--json", default="gpu_check.json", help="where the results go")
    ap.add_argument("--max-batch", type=int, default=1024, help="largest training batch tried when searching")
    ap.add_argument("--max-sample-batch", type=int, default=256,
                    help="largest sampling batch tried (bounds the time of the 50-step runs at that batch)")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="skip the compiled sampling rows")
    ap.add_argument("--compile", dest="smoke_compile", action="store_true",
                    help="with --smoke: keep the compiled sampling rows (about a minute of compiling on a CPU)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.device, args.compile = args.device or "cpu", args.smoke_compile
        args.preset, args.hovernet_preset, args.size, args.repeats = "tiny", "tiny", 32, 1
        args.train_batch, args.sample_batch, args.sample_steps = 2, 2, 2
        args.max_batch, args.max_sample_batch = min(args.max_batch, 4), min(args.max_sample_batch, 4)
    else:
        if args.device is None:
            if not torch.cuda.is_available():
                sys.exit("gpu_check: no CUDA device here; run with --smoke for the CPU check, or --device cpu")
            args.device = "cuda"
        args.preset, args.hovernet_preset, args.size, args.repeats = "paper", "paper", 128, 5
        args.train_batch, args.sample_batch, args.sample_steps = 8, 32, 50
    args.n_types = 6  # Lizard's
    device = torch.device(args.device)
    bf16 = native_bf16(device)
    t_start = time.perf_counter()
    res: dict[str, Any] = {"machine": describe_machine(), "device": str(device), "bf16": bf16, "smoke": args.smoke,
                           "preset": args.preset, "patch_size": args.size}
    sections: dict[str, Callable[[], dict[str, Any]]] = {
        "train_patch": lambda: measure_training("patch", args, device, bf16),
        "train_mask": lambda: measure_training("mask", args, device, bf16),
        "sampling": lambda: measure_sampling(args, device, bf16),
        "hovernet": lambda: measure_hovernet(args, device, bf16),
    }
    if args.compile:
        sections["sampling_compiled"] = lambda: measure_sampling_compiled(
            args, device, bf16, _sampling_batches(args, res["sampling"].get("largest_sampling_batch", 0)))
    for name, measure in sections.items():
        # each section on its own: one that fails (a kernel missing on this GPU, a package missing
        # on this machine) is recorded in one line, and the others still run
        try:
            res[name] = measure()
        except Exception as exc:
            res[name] = {"error": _error_line(exc)}
            print(f"gpu_check: {name} failed: {res[name]['error']}", file=sys.stderr)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        res["seconds"] = time.perf_counter() - t_start
        _write_json(res, args.json)
    samp = res["sampling"]
    patch_rates = [v for sec in ("sampling", "sampling_compiled") for k, v in res.get(sec, {}).items()
                   if k.startswith("patch_")]
    mask_rate = samp.get(f"mask_eager_b{args.sample_batch}")
    res["s2_bank_projected_hours"] = (S2_PATCHES * (1 / mask_rate + 1 / max(patch_rates)) / 3600
                                      if patch_rates and mask_rate else None)
    res["seconds"] = time.perf_counter() - t_start
    _print_table(res, args)
    _write_json(res, args.json)
    return res


if __name__ == "__main__":
    main()
