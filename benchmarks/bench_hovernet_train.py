"""HoVerNet training throughput on real patches: today's code against the code before plain tensors
(MONAI MetaTensors through the augmentation and the loss's Sobel gradients, NCHW), in one process.

    .venv/bin/python benchmarks/bench_hovernet_train.py --store consep.h5 --split R2 [--batches 12]
        [--rounds 3] [--preset tiny] [--bf16] [--json out.json]

Each variant runs ``--batches`` batches of the augmented store (data loading in the main process,
as ``num_workers=0``) through full training steps, phase 1 (encoder frozen) and phase 2 (all
layers), rounds interleaved; the median round is reported. Data time (augmentation + targets +
collation) and step time are timed apart. Achieved GFLOP/s counts the forward and backward FLOPs
of a phase-2 step (torch.utils.flop_counter) over the step time; the conv ceiling is a 3x3 conv
64->64 at 32 px in the same run (benchmarks/bench_nets.py). ``--bf16`` adds both layouts under bf16
autocast (the trainer's ``precision="bf16"``: network in bf16, losses in float32), against the bf16
conv ceiling; only meaningful where bf16 is native (the machine line says).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # OpenMP spin-waits crawl on a shared CPU

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import hovernet.data as hdata  # noqa: E402
from bench_nets import _conv_ceiling  # noqa: E402
from hovernet.config import get_hovernet_preset  # noqa: E402
from hovernet.data import HoVerNetTrainDataset, store_dataset  # noqa: E402
from hovernet.losses import HoVerNetLoss  # noqa: E402
from hovernet.model import HoVerNet  # noqa: E402
from hovernet.trainer import _make_optimizer  # noqa: E402
from nasdm_aug.hardware import describe_machine  # noqa: E402


class MetaTensorSobelLoss(HoVerNetLoss):
    """The loss as it was: MONAI's SobelGradients transforms, which return MetaTensors."""

    def __init__(self, cfg=None) -> None:
        super().__init__(cfg)
        from monai.transforms import SobelGradients

        self.sobel_v = SobelGradients(kernel_size=5, spatial_axes=0)
        self.sobel_h = SobelGradients(kernel_size=5, spatial_axes=1)

    def _hv_grad(self, hv: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.sobel_h(hv[:, 0]), self.sobel_v(hv[:, 1])], dim=1)


def run_variant(name: str, base, cfg, batches: int, seed: int) -> dict[str, float]:
    """Patches/s, data and step seconds per batch of one variant, phase 1 and phase 2."""
    before = name == "before"
    fmt = torch.channels_last if "channels_last" in name else torch.contiguous_format
    bf16 = name.endswith("bf16")
    ds = HoVerNetTrainDataset(base, augment=True, seed=seed)
    loss_fn = MetaTensorSobelLoss(cfg.loss) if before else HoVerNetLoss(cfg.loss)
    torch.manual_seed(0)
    model = HoVerNet(cfg.model).to(memory_format=fmt).train()
    out: dict[str, float] = {}
    scope = (lambda: contextlib.nullcontext()) if before else hdata._plain_tensors
    for phase in (1, 2):
        opt = _make_optimizer(model, cfg, phase)
        loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
        data_s = step_s = 0.0
        it = iter(loader)
        orig = hdata._plain_tensors
        hdata._plain_tensors = scope
        try:
            for i in range(batches + 1):  # the first batch warms up and is not counted
                t0 = time.perf_counter()
                batch = next(it)
                t1 = time.perf_counter()
                x = batch["image"].contiguous(memory_format=fmt)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    pred = model(x)
                terms = loss_fn(pred, batch)
                opt.zero_grad(set_to_none=True)
                terms["loss"].backward()
                opt.step()
                t2 = time.perf_counter()
                if i:
                    data_s, step_s = data_s + t1 - t0, step_s + t2 - t1
        finally:
            hdata._plain_tensors = orig
        n = batches * cfg.batch_size
        out[f"phase{phase}_patches_per_s"] = n / (data_s + step_s)
        out[f"phase{phase}_data_ms_per_patch"] = data_s / n * 1e3
        out[f"phase{phase}_step_ms_per_patch"] = step_s / n * 1e3
    return out


def step_flops(cfg, image_shape) -> float:
    """Forward + backward FLOPs of one phase-2 step at the preset's batch."""
    model = HoVerNet(cfg.model).train()
    model.freeze_encoder(False)
    b, (c, h, w) = cfg.batch_size, image_shape
    x = torch.rand(b, c, h, w)
    t = {"np": torch.randint(0, 2, (b, h, w)), "hv": torch.rand(b, 2, h, w), "nc": torch.randint(0, 2, (b, h, w))}
    with FlopCounterMode(display=False) as fc:
        HoVerNetLoss(cfg.loss)(model(x), t)["loss"].backward()
    return float(fc.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--split", default="R2")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bf16", action="store_true", help="also time both layouts under bf16 autocast")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = store_dataset(args.store, args.split)
    n_types = base.real.type_table.n_types
    cfg = get_hovernet_preset(args.preset)
    cfg = cfg.replace(model=cfg.model.replace(n_types=n_types))
    shape = tuple(HoVerNetTrainDataset(base, augment=False)[0]["image"].shape)
    print(f"machine: {describe_machine()}; threads {args.threads}; {args.store}:{args.split} ({len(base)} patches, "
          f"{shape[1]} px), preset {args.preset}, batch {cfg.batch_size}")
    variants = ["before", "now contiguous", "now channels_last"]
    if args.bf16:
        variants += ["now contiguous bf16", "now channels_last bf16"]
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    ceilings, ceilings_bf16 = [], []
    for r in range(args.rounds):
        ceilings.append(_conv_ceiling(32, "fp32", 5))
        if args.bf16:
            ceilings_bf16.append(_conv_ceiling(32, "bf16", 5))
        for v in variants:
            runs[v].append(run_variant(v, base, cfg, args.batches, seed=r))
    med = {v: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for v, rs in runs.items()}
    flops = step_flops(cfg, shape)
    ceiling = statistics.median(ceilings)
    ceiling_bf16 = statistics.median(ceilings_bf16) if ceilings_bf16 else None
    ref = med["before"]
    print(f"\nconv ceiling (3x3 64->64, 32 px): fp32 {ceiling:.1f} GFLOP/s"
          + (f", bf16 {ceiling_bf16:.1f} GFLOP/s" if ceiling_bf16 else "")
          + f"; phase-2 step: {flops / 1e9:.2f} GFLOP fwd+bwd per batch of {cfg.batch_size}")
    print("| variant | phase 1 patches/s | phase 2 patches/s | data ms/patch | step ms/patch (phase 2) "
          "| phase-2 step GFLOP/s (% of ceiling) | phase 2 vs before |")
    print("|---|---|---|---|---|---|---|")
    for v in variants:
        m = med[v]
        gflops = flops / cfg.batch_size / (m["phase2_step_ms_per_patch"] / 1e3) / 1e9
        ceil = ceiling_bf16 if v.endswith("bf16") else ceiling
        print(f"| {v} | {m['phase1_patches_per_s']:.1f} | {m['phase2_patches_per_s']:.1f} | "
              f"{m['phase2_data_ms_per_patch']:.2f} | {m['phase2_step_ms_per_patch']:.1f} | "
              f"{gflops:.1f} ({100 * gflops / ceil:.0f}%) | "
              f"{m['phase2_patches_per_s'] / ref['phase2_patches_per_s']:.2f}x |")
        m["phase2_step_gflops"] = gflops
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": describe_machine(), "ceiling_gflops": ceiling,
                                               "ceiling_bf16_gflops": ceiling_bf16,
                                               "step_gflop": flops / 1e9, "median": med, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
