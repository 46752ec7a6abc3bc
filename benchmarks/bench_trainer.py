"""Trainer benchmark: per-step time of the full NASDM trainer (data loading, flips, hybrid
loss, clipping, EMA, quartile logging) against a bare forward + backward + AdamW step.

Run: ``.venv/bin/python benchmarks/bench_trainer.py [--kind patch|mask|both] [--steps 5] [--rounds 4] [--threads 1]``.
Both sides use the ``tiny`` preset on 64-px toy patches at its batch size; rounds alternate bare and
trainer so load from other processes hits both alike; medians are reported. Times are this process's
CPU time (``time.process_time``), which other jobs on a shared CPU do not inflate; with one torch
thread and ``num_workers=0`` it counts all the work of a step. Wall times are printed beside them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.data.toy import generate_toy_tile
from nasdm_aug.nets import build_model
from nasdm_aug.training.config import get_train_preset
from nasdm_aug.training.data import NASDMDataset
from nasdm_aug.training.trainer import Trainer
from nasdm_aug.types import LIZARD

SIZE = 64


def _store(path: Path, n: int = 32) -> Path:
    with PatchStoreWriter(path, patch_size=SIZE, type_table=LIZARD) as w:
        for i in range(n):
            tile = generate_toy_tile(i, size=(SIZE, SIZE))
            w.append(tile.image, tile.inst, tile.type, source=f"t{i}")
        w.set_splits({"Train": [f"t{i}" for i in range(n)]})
    return path


def _bare(model: torch.nn.Module, batch: dict, steps: int) -> float:
    """Seconds per step of model forward + an MSE on the eps half + backward + AdamW, on a fixed batch."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as the trainer
    x, cond = batch["x"], batch["cond"]
    t = torch.randint(0, 1000, (x.shape[0],))
    noise = torch.randn_like(x)
    c = x.shape[1]
    t0, w0 = time.process_time(), time.perf_counter()
    for _ in range(steps):
        out = model(x + noise, t, cond)
        loss = ((out[:, :c] - noise) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.process_time() - t0) / steps, (time.perf_counter() - w0) / steps


def _trainer(trainer: Trainer, steps: int) -> float:
    """Seconds per step of ``Trainer.run`` for ``steps`` more steps (no checkpoint, no grid inside)."""
    save = trainer.save
    trainer.save = lambda: None  # the end-of-run checkpoint is I/O, not per-step overhead
    trainer.config = trainer.config.replace(steps=trainer.step + steps)
    t0, w0 = time.process_time(), time.perf_counter()
    trainer.run()
    trainer.save = save
    return (time.process_time() - t0) / steps, (time.perf_counter() - w0) / steps


def _components(trainer: Trainer, ds: NASDMDataset, steps: int) -> dict[str, float]:
    """Per-step seconds of the overhead parts measured alone: data loading and the EMA update."""
    trainer.config = trainer.config.replace(steps=trainer.step + steps)
    t0 = time.process_time()
    for _ in trainer._loader():
        pass
    data = (time.process_time() - t0) / steps
    t0 = time.process_time()
    for _ in range(steps):
        trainer.ema.update()
    return {"data": data, "ema": (time.process_time() - t0) / steps}


def bench(kind: str, store: Path, steps: int, rounds: int) -> dict[str, float]:
    cfg = get_train_preset(kind, "tiny", n_types=LIZARD.n_types, image_size=SIZE)
    cfg = cfg.replace(log_every=25, sample_every=0, ckpt_every=10**9, steps=3)
    ds = NASDMDataset(store, kind, "Train")
    batch = {k: torch.stack([ds[i][k] for i in range(cfg.batch_size)]) for k in ("x", "cond")}
    if cfg.layout == "channels_last":  # the input layout the trainer gives the model
        batch["x"] = batch["x"].contiguous(memory_format=torch.channels_last)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(build_model(cfg.model), cfg.diffusion.build(), ds, cfg, tmp, progress=False)
        bare_model = trainer.model  # the same module on both sides: same weights, same memory
        trainer.run()  # warm-up (first-call allocations) on both sides
        _bare(bare_model, batch, 3)
        bare, full = [], []
        for _ in range(rounds):
            bare.append(_bare(bare_model, batch, steps))
            full.append(_trainer(trainer, steps))
        parts = _components(trainer, ds, steps)
    b, f = (statistics.median(r[0] for r in rs) for rs in (bare, full))
    bw, fw = (statistics.median(r[1] for r in rs) for rs in (bare, full))
    params = sum(p.numel() for p in bare_model.parameters()) / 1e6
    return {"kind": kind, "params_m": params, "batch": cfg.batch_size, "bare_ms": 1e3 * b, "trainer_ms": 1e3 * f,
            "overhead": f / b - 1, "data_ms": 1e3 * parts["data"], "ema_ms": 1e3 * parts["ema"],
            "bare_wall_ms": 1e3 * bw, "trainer_wall_ms": 1e3 * fw}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=["patch", "mask", "both"], default="both")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kinds = ["patch", "mask"] if args.kind == "both" else [args.kind]
    with tempfile.TemporaryDirectory() as tmp:
        store = _store(Path(tmp) / "toy.h5")
        rows = [bench(k, store, args.steps, args.rounds) for k in kinds]
    print(f"torch {torch.__version__}, threads {args.threads}, {SIZE}-px toy patches, {args.steps} steps x {args.rounds} rounds (medians)\n")
    print("| model | params (M) | batch | bare f+b+step, CPU ms | trainer step, CPU ms | overhead | data alone, CPU ms | EMA alone, CPU ms | wall ms bare / trainer |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['params_m']:.2f} | {r['batch']} | {r['bare_ms']:.1f} | {r['trainer_ms']:.1f} | "
              f"{100 * r['overhead']:+.1f}% | {r['data_ms']:.2f} | {r['ema_ms']:.2f} | "
              f"{r['bare_wall_ms']:.0f} / {r['trainer_wall_ms']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
