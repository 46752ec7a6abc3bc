"""HoVerNet training step with torch's fused Adam against the per-parameter loop, same data and seed.

    .venv/bin/python benchmarks/bench_hovernet_optimizer.py --store STORE.h5 [--split R2] [--batches 12]
        [--rounds 3] [--preset tiny] [--json out.json]

The first ``--batches`` batches of the augmented training items of ``STORE:SPLIT`` (HoVerNet's
own dataset wrapper, batch size of the preset) are read once; each round trains a fresh model from
the same seed over them in phase 1 (encoder frozen) and phase 2 (all layers), with and without
``fused=True``, interleaved. Reported: best-of-rounds patches/s and the last loss of each (equal to
float rounding: the fused kernel is the same algorithm).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_recipe_sizes import _cpu  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from hovernet.config import get_hovernet_preset  # noqa: E402
from hovernet.data import HoVerNetTrainDataset  # noqa: E402
from hovernet.losses import HoVerNetLoss  # noqa: E402
from hovernet.model import HoVerNet  # noqa: E402
from nasdm_aug.mixing import SyntheticMixDataset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--split", default="R2")
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    cfg = get_hovernet_preset(args.preset)
    ds = HoVerNetTrainDataset(SyntheticMixDataset(args.store, split=args.split, mode="real", ratio=1.0), True, 0)
    batches = []
    for b in DataLoader(ds, batch_size=cfg.batch_size, shuffle=False):
        batches.append(b)
        if len(batches) == args.batches:
            break
    loss_fn = HoVerNetLoss(cfg.loss)

    def run(fused: bool, phase: int) -> tuple[float, float]:
        torch.manual_seed(0)
        model = HoVerNet(cfg.model)
        model.freeze_encoder(phase == 1)
        model.train()
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], cfg.lr, fused=fused)
        t0 = time.perf_counter()
        for b in batches:
            terms = loss_fn(model(b["image"]), b)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            opt.step()
        return time.perf_counter() - t0, float(terms["loss"])

    best: dict[str, float] = {}
    last: dict[str, float] = {}
    for _ in range(args.rounds):
        for phase in (1, 2):
            for fused in (False, True):
                key = f"phase{phase}_{'fused' if fused else 'loop'}"
                dt, last[key] = run(fused, phase)
                best[key] = min(best.get(key, float("inf")), dt)
    n = len(batches) * cfg.batch_size
    res = {"machine": _cpu(), "threads": torch.get_num_threads(), "preset": args.preset,
           "patch_size": int(batches[0]["image"].shape[-1]), "patches": n,
           **{f"{k}_per_s": n / v for k, v in best.items()}, **{f"{k}_last_loss": v for k, v in last.items()},
           **{f"phase{p}_speedup": best[f"phase{p}_loop"] / best[f"phase{p}_fused"] for p in (1, 2)}}
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
