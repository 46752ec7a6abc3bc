"""Same-budget ablation of the patch model: variants of the ``consep-cpu`` recipe, each trained for
the same wall time on this machine, each scored on the same held-out masks with the same seeds.

    .venv/bin/python benchmarks/ablate_patch_model.py --store consep.h5 --work DIR \\
        --segmenter HOVERNET_RUN [--budget-min 20] [--variants baseline,min-snr,...] [--jobs 2] \\
        [--num 128] [--sampling ddpm:50:1.5] [--fractions 0.25,0.5,1] [--json out.json]

A smaller budget reruns the whole ablation quickly (``--budget-min 5``). Steps:

1. **time**: each variant's seconds per training step, one thread, measured in this process on an
   otherwise idle core (a few warm-up steps, then the median of timed steps) and cached in
   ``DIR/timing.json``; the budget becomes ``steps = budget / (s per step)``. So every variant gets
   the same wall time on an idle core whatever else shares the CPU while they train.
2. **train**: ``nasdm-aug train patch --config`` per variant (``--jobs`` at a time, one thread
   each, ``--resume`` after a kill), checkpoints kept at every quarter of the run.
3. **score**: for each variant (and, for ``--fractions``, its checkpoints at those fractions of
   the budget), ``nasdm-aug synthesize`` from ``--num`` masks of ``--split`` (R2: the generator
   never sees it), then ``nasdm-aug evaluate`` against the real patches of those masks with the
   segmenter (FID, KID, IS, the fidelity criteria), beside the R1-against-R2 baseline of the same
   size; plus two pixel statistics against the real parents: **stroma speckle** (mean 3x3 local
   variance of grey levels over background pixels at least 3 px from any nucleus; real = 1) and
   **nuclei contrast** (mean grey level of that background minus that of nuclei pixels).

Each ``--sampling`` value is ``SAMPLER:STEPS:GUIDANCE[:LOW-HIGH|all[:ETA]]`` (LOW-HIGH: ``synthesize
--guidance-interval``, left out or ``all``: every step, whatever the model's ``sampling.json`` says;
ETA: ``synthesize --eta``, DDIM's noise); the first scores every variant, the others
score the last variant named, or ``--sweep LABEL`` (the sampling sweep of the chosen model).
``--score-runs LABEL=PATH,...`` scores other patch runs or checkpoint folders the same way: a
longer run of a variant and its kept checkpoints (quality against budget), or the shipped model
(``nasdm_aug/assets/consep-cpu/patch``). Reruns reuse finished runs, banks (``synthesize
--resume``) and reports made from the same inputs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: the paper's recipe, which every variant starts from: spelled out rather than left to the
#: consep-cpu preset, so the variants keep their meaning when the preset adopts a winner
_PAPER = {"diffusion.mean_type": "epsilon", "diffusion.loss_weighting": "none", "model.input_condition": "none",
          "diffusion.schedule": "linear"}
_X0 = {"diffusion.mean_type": "start_x", "diffusion.loss_weighting": "min-snr", "model.input_condition": "mask",
       "diffusion.schedule": "linear"}

#: name -> overrides of the consep-cpu patch recipe: "diffusion.X" and "model.X" set nested fields
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": dict(_PAPER),
    "min-snr": {**_PAPER, "diffusion.loss_weighting": "min-snr"},
    "p2": {**_PAPER, "diffusion.loss_weighting": "p2"},
    "input-cond": {**_PAPER, "model.input_condition": "mask"},
    "min-snr+input-cond": {**_PAPER, "diffusion.loss_weighting": "min-snr", "model.input_condition": "mask"},
    "p2+input-cond": {**_PAPER, "diffusion.loss_weighting": "p2", "model.input_condition": "mask"},
    "x0+min-snr+input-cond": dict(_X0),
    "v+min-snr+input-cond": {**_X0, "diffusion.mean_type": "v"},
    "min-snr+input-cond+lr4e-4": {**_PAPER, "diffusion.loss_weighting": "min-snr", "model.input_condition": "mask",
                                  "lr": 4e-4, "lr_after_drop": 8e-5},
    "min-snr+input-cond+w16": {**_PAPER, "diffusion.loss_weighting": "min-snr", "model.input_condition": "mask",
                               "model.base_channels": 16, "model.head_channels": 16, "model.spade_hidden": 16},
    "min-snr+input-cond+w64": {**_PAPER, "diffusion.loss_weighting": "min-snr", "model.input_condition": "mask",
                               "model.base_channels": 64},
    # size against steps for the shipped recipe: a net of half or twice the width for the steps the
    # same wall time buys, and a higher rate
    "x0+w16": {**_X0, "model.base_channels": 16, "model.head_channels": 16, "model.spade_hidden": 16},
    "x0+w64": {**_X0, "model.base_channels": 64},
    "x0+lr4e-4": {**_X0, "lr": 4e-4, "lr_after_drop": 8e-5},
    "x0+2res": {**_X0, "model.num_res_blocks": 2},
    # the cosine schedule of improved DDPM: under the linear one half the timesteps drawn have an
    # SNR below 0.09, where Min-SNR's x_0 weight min(SNR, 5) leaves them almost no say; under the
    # cosine one a fifth do, so more of the same steps train the noise levels that draw the tissue
    "x0+cosine": {**_X0, "diffusion.schedule": "cosine"},
}


def variant_config(store: str, overrides: dict[str, Any], steps: int):
    """The consep-cpu patch TrainConfig for this store with ``overrides`` and ``steps`` (the rate
    drops at 90% of the steps, as the preset's does; a checkpoint is kept at every quarter)."""
    from nasdm_aug.data.store import PatchStore
    from nasdm_aug.training.config import get_train_preset

    with PatchStore(store) as st:
        cfg = get_train_preset("patch", "consep-cpu", n_types=st.type_table.n_types, image_size=st.patch_size)
    nested: dict[str, dict[str, Any]] = {"model": {}, "diffusion": {}}
    top: dict[str, Any] = {}
    for key, value in overrides.items():
        head, _, field = key.partition(".")
        if field:
            nested[head][field] = value
        else:
            top[key] = value
    quarter = max(1, steps // 4)
    return cfg.replace(
        model=cfg.model.replace(**nested["model"]), diffusion=cfg.diffusion.replace(**nested["diffusion"]),
        steps=steps, lr_drop_step=max(1, int(0.9 * steps)), keep_every=quarter, ckpt_every=quarter,
        sample_every=0, layout="contiguous", **top,
    )


def seconds_per_step(cfg, store: str, repeats: int = 8, warmup: int = 3) -> float:
    """Median seconds of one training step of ``cfg``'s model on a real batch of ``store``, one thread."""
    import torch
    from torch.utils.data import default_collate

    from nasdm_aug.nets import build_model
    from nasdm_aug.training.data import NASDMDataset
    from nasdm_aug.training.trainer import timing_step

    torch.set_num_threads(1)
    torch.manual_seed(0)
    ds = NASDMDataset(store, "patch", "Train")
    batch = default_collate([ds[i] for i in range(cfg.batch_size)])
    fmt = torch.channels_last if cfg.layout == "channels_last" else torch.contiguous_format
    step = timing_step(build_model(cfg.model), cfg.diffusion.build(), batch["x"], batch["cond"], fmt, lr=cfg.lr)
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    print("$", " ".join(cmd), flush=True)
    with open(log, "a") as f:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)


def wait_all(procs: list[tuple[str, subprocess.Popen, Path]]) -> None:
    for name, proc, log in procs:
        if proc.wait():
            sys.exit(f"Error: {name} failed (exit {proc.returncode}); see {log}")


def one_thread_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def pixel_stats(images: np.ndarray, insts: np.ndarray) -> dict[str, float]:
    """Stroma speckle and nuclei contrast of uint8 patches [N, H, W, 3] with their instance maps."""
    from scipy import ndimage

    grey = images.astype(np.float64).mean(axis=-1)
    speckle, stroma_sum, stroma_n, nuc_sum, nuc_n = [], 0.0, 0, 0.0, 0
    for g, inst in zip(grey, insts):
        far = ndimage.distance_transform_edt(inst == 0) >= 3
        mean = ndimage.uniform_filter(g, 3, mode="reflect")
        var = ndimage.uniform_filter(g * g, 3, mode="reflect") - mean * mean
        if far.any():
            speckle.append(var[far].mean())
            stroma_sum += g[far].sum()
            stroma_n += int(far.sum())
        nuc = inst > 0
        nuc_sum += g[nuc].sum()
        nuc_n += int(nuc.sum())
    return {"stroma_speckle": float(np.mean(speckle)) if speckle else float("nan"),
            "nuclei_contrast": stroma_sum / max(stroma_n, 1) - nuc_sum / max(nuc_n, 1)}


def evaluate(nasdm: str, real: str, split: str, synthetic: str, ev: Path, segmenter: str, num: int) -> dict:
    """``nasdm-aug evaluate`` of ``synthetic`` against ``real:split``; a report made from the same
    inputs (its ``inputs.json``) is reused."""
    inputs = {"real": str(Path(real).resolve()), "split": split, "synthetic": synthetic,
              "segmenter": str(Path(segmenter).resolve()), "max_patches": num}
    try:
        reuse = json.loads((ev / "inputs.json").read_text()) == inputs and (ev / "metrics.json").is_file()
    except (OSError, ValueError):
        reuse = False
    if not reuse:
        cmd = [nasdm, "evaluate", "--real", f"{real}:{split}", "--synthetic", synthetic, "--out", str(ev),
               "--overwrite", "--seed", "0", "--segmenter", segmenter, "--max-patches", str(num), "--device", "cpu"]
        wait_all([("evaluate", run(cmd, ev.with_suffix(".log"), one_thread_env()), ev.with_suffix(".log"))])
        (ev / "inputs.json").write_text(json.dumps(inputs))
    return json.loads((ev / "metrics.json").read_text())


def summarise(m: dict) -> dict[str, float]:
    g = m["generative"]
    row = {"fid": g["fid"], "kid_x1e3": 1e3 * g["kid"]["mean"]}
    row["is"] = (g.get("is_synthetic") or {}).get("mean")
    row["is_real"] = (g.get("is_real") or {}).get("mean")
    fid = m.get("fidelity") or {}
    for side in ("synthetic", "real"):
        if side in fid and "score" in fid[side]:
            row[f"fidelity_{side}"] = fid[side]["score"]
            row[f"missing_rate_{side}"] = fid[side].get("missing_rate")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="real PatchStore (consep.h5 of docs/real-tissue.md)")
    ap.add_argument("--work", required=True)
    ap.add_argument("--segmenter", required=True, help="HoVerNet run trained on real data outside --split")
    ap.add_argument("--budget-min", type=float, default=20.0, help="training wall time per variant on one idle core")
    ap.add_argument("--variants", default="baseline,min-snr,input-cond,min-snr+input-cond",
                    help=f"comma-separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--jobs", type=int, default=2, help="processes at once (one thread each)")
    ap.add_argument("--split", default="R2", help="held-out masks to sample from and score against")
    ap.add_argument("--baseline-split", default="R1", help="real split compared with --split as the baseline")
    ap.add_argument("--num", type=int, default=128, help="masks drawn (seed 0) from --split")
    ap.add_argument("--sampling", default="ddpm:50:1.5", help="SAMPLER:STEPS:GUIDANCE[:LOW-HIGH][,...]")
    ap.add_argument("--fractions", default="", help="also score these fractions of the budget (e.g. 0.25,0.5) "
                                                     "for the last variant")
    ap.add_argument("--score-runs", default="", help="LABEL=PATH,... also score these patch runs or checkpoint "
                                                     "folders (e.g. a longer run of a variant, the shipped "
                                                     "nasdm_aug/assets/consep-cpu/patch) the same way")
    ap.add_argument("--sweep", default="", help="the variant or --score-runs label the other --sampling values "
                                                "score (default: the last variant)")
    ap.add_argument("--sheet", default="", help="BANK,BANK,...: write DIR/sheet.png, mask | each bank's patch | "
                                                "real parent for 12 masks (bank names as in DIR/banks, no .h5)")
    ap.add_argument("--curve", default="", help="VARIANT: plot its scores against the fraction of its budget into "
                                                "DIR/curve.png, from --score-runs labelled VARIANT-FRACTION")
    ap.add_argument("--skip-train", action="store_true", help="score what is trained")
    ap.add_argument("--skip-score", action="store_true", help="train only")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        sys.exit(f"Error: unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}")
    samplings = []
    for spec in args.sampling.split(","):
        try:
            sampler, steps, guidance, *rest = spec.split(":")
            interval = rest[0] if rest and rest[0] != "all" else ""
            eta = float(rest[1]) if len(rest) > 1 else None
            if len(rest) > 2 or (interval and len(interval.split("-")) != 2):
                raise ValueError(spec)
            samplings.append((sampler, int(steps), float(guidance), interval, eta))
        except ValueError:
            sys.exit(f"Error: --sampling {spec!r} is not SAMPLER:STEPS:GUIDANCE[:LOW-HIGH|all[:ETA]] (e.g. "
                     "ddpm:50:1.5, ddpm:50:1.5:0.3-5 or ddim:25:1.5:0-5.42:0.5)")
    from nasdm_aug.data.store import PatchStore
    from nasdm_aug.hardware import describe_machine

    nasdm = str(Path(sys.executable).with_name("nasdm-aug"))
    work = Path(args.work)
    (work / "runs").mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"machine": describe_machine(), "budget_min": args.budget_min, "num": args.num,
                           "split": args.split, "variants": {}}

    # 1. time each variant on one idle thread (cached: the budget must not move between reruns)
    timing_path = work / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    configs = {}
    for name in names:
        probe = variant_config(args.store, VARIANTS[name], 1000)
        key = probe.replace(steps=1, lr_drop_step=0, keep_every=0, ckpt_every=1).to_json(indent=None)
        if timing.get(name, {}).get("key") != key:
            timing[name] = {"key": key, "s_per_step": seconds_per_step(probe, args.store)}
            timing_path.write_text(json.dumps(timing, indent=2))
        sps = timing[name]["s_per_step"]
        steps = max(4, int(args.budget_min * 60 / sps))
        configs[name] = variant_config(args.store, VARIANTS[name], steps)
        out["variants"][name] = {"overrides": VARIANTS[name], "s_per_step_idle": sps, "steps": steps,
                                 "samples": steps * configs[name].batch_size,
                                 "samples_per_s_idle": configs[name].batch_size / sps}
        print(f"{name}: {sps:.3f} s/step on one idle thread -> {steps} steps", flush=True)

    # 2. train, --jobs at a time
    if not args.skip_train:
        pending = list(names)
        running: list[tuple[str, subprocess.Popen, Path]] = []
        while pending or running:
            while pending and len(running) < args.jobs:
                name = pending.pop(0)
                run_dir, cfg_path = work / "runs" / name, work / f"{name}.config.json"
                configs[name].save(cfg_path)
                done = (run_dir / "checkpoints" / f"step_{configs[name].steps:08d}").is_dir()
                if done:
                    continue
                resume = ["--resume"] if (run_dir / "config.json").is_file() else []
                cmd = [nasdm, "train", "patch", "--store", args.store, "--config", str(cfg_path), "--out", str(run_dir),
                       "--device", "cpu", "--no-progress", *resume]
                log = work / f"{name}.train.log"
                running.append((name, run(cmd, log, one_thread_env()), log))
            time.sleep(5)
            for item in list(running):
                if item[1].poll() is not None:
                    wait_all([item])
                    running.remove(item)

    if args.skip_score:
        return
    # 3. score
    with PatchStore(args.store) as st:
        pool = st.indices(args.split)
        idx = np.sort(np.random.default_rng(0).choice(pool, size=min(args.num, len(pool)), replace=False))
        real = st.read(idx, keys=("image", "inst"))
    real_stats = pixel_stats(real["image"], real["inst"])
    out["real"] = real_stats
    # the real-against-real baseline of the same size: another split against this one
    base = evaluate(nasdm, args.store, args.split, f"{args.store}:{args.baseline_split}",
                    work / f"eval-{args.baseline_split}-vs-{args.split}", args.segmenter, len(idx))
    out["baseline"] = summarise(base)
    print("baseline", json.dumps(out["baseline"]), flush=True)

    def tag_of(spec: tuple[str, int, float, str, float | None]) -> str:
        return f"{spec[0]}{spec[1]}g{spec[2]}" + (f"i{spec[3]}" if spec[3] else "") + \
            (f"e{spec[4]:g}" if spec[4] is not None else "")

    def score(label: str, model_path: Path, sampler: str, steps: int, guidance: float,
              interval: str = "", eta: float | None = None) -> dict[str, Any]:
        bank = work / "banks" / f"{label}.h5"
        bank.parent.mkdir(exist_ok=True)
        cmd = [nasdm, "synthesize", "--model", str(model_path), "--masks", args.store,
               "--indices", ",".join(str(int(i)) for i in idx), "--sampler", sampler, "--steps", str(steps),
               "--guidance", str(guidance), "--seed", "0", "--device", "cpu", "--out", str(bank), "--resume",
               "--preview", "16", "--guidance-interval", interval.replace("-", ",") if interval else "all",
               *(["--eta", str(eta)] if eta is not None else [])]
        t0 = time.perf_counter()
        wait_all([("synthesize", run(cmd, bank.with_suffix(".log"), one_thread_env()), bank.with_suffix(".log"))])
        wall = time.perf_counter() - t0
        m = evaluate(nasdm, args.store, args.split, str(bank), work / f"eval-{label}", args.segmenter, len(idx))
        with PatchStore(bank) as b:
            syn = b.read(np.arange(len(b)), keys=("image", "inst"))
        px = pixel_stats(syn["image"], syn["inst"])
        row = {**summarise(m), **px, "synth_wall_s": round(wall, 1)}
        row["fid_ratio"] = row["fid"] / out["baseline"]["fid"]
        row["kid_ratio"] = row["kid_x1e3"] / out["baseline"]["kid_x1e3"]
        row["speckle_ratio"] = px["stroma_speckle"] / real_stats["stroma_speckle"]
        if "fidelity_real" in row and row["fidelity_real"]:
            row["fidelity_ratio"] = row["fidelity_synthetic"] / row["fidelity_real"]
        print(label, json.dumps(row), flush=True)
        return row

    first = samplings[0]
    for name in names:
        tag = f"{name}@{tag_of(first)}"
        out["variants"][name]["scores"] = {tag: score(tag, work / "runs" / name, *first)}
    extra: dict[str, Path] = {}
    for spec in [x for x in args.score_runs.split(",") if x]:
        label, _, path = spec.partition("=")
        if not path or not Path(path).exists():
            sys.exit(f"Error: --score-runs {spec!r} is not LABEL=PATH of an existing run or checkpoint folder")
        extra[label] = Path(path)
        tag = f"{label}@{tag_of(first)}"
        out.setdefault("extra", {})[label] = {"path": path, "scores": {tag: score(tag, Path(path), *first)}}
    last = args.sweep or (names[-1] if names else "")
    if not last and (len(samplings) > 1 or args.fractions):
        sys.exit("Error: --sampling sweeps and --fractions need a variant or --sweep LABEL to apply to")
    for spec in samplings[1:]:
        tag = f"{last}@{tag_of(spec)}"
        if last in extra:
            out["extra"][last]["scores"][tag] = score(tag, extra[last], *spec)
        else:
            out["variants"][last]["scores"][tag] = score(tag, work / "runs" / last, *spec)
    for frac in [float(f) for f in args.fractions.split(",") if f]:
        step = int(round(frac * configs[last].steps / max(1, configs[last].steps // 4))) * max(1, configs[last].steps // 4)
        ckpt = work / "runs" / last / "checkpoints" / f"step_{step:08d}"
        if not ckpt.is_dir():
            print(f"{last}: no checkpoint at {frac:g} of the budget ({ckpt}); skipped", flush=True)
            continue
        tag = f"{last}@{frac:g}budget@{tag_of(first)}"
        out["variants"][last]["scores"][tag] = score(tag, ckpt, *first)
    if args.curve:
        write_curve(out, args.curve, tag_of(first), work / "curve.png")
    if args.sheet:
        write_sheet(args.store, work, [b for b in args.sheet.split(",") if b], work / "sheet.png")
    print(table(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float) + "\n")


def write_curve(out: dict[str, Any], variant: str, sampling: str, path: Path) -> None:
    """FID and KID ratios of ``variant`` against the fraction of its budget (its --score-runs
    checkpoints labelled ``VARIANT-FRACTION``, and the variant itself at 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = {1.0: out["variants"][variant]["scores"][f"{variant}@{sampling}"]}
    for label, v in out.get("extra", {}).items():
        head, _, frac = label.rpartition("-")
        if head == variant:
            points[float(frac)] = v["scores"][f"{label}@{sampling}"]
    fr = sorted(points)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key, target in zip(axes, ("fid_ratio", "kid_ratio"), (1.5, 3.0)):
        ax.plot(fr, [points[f][key] for f in fr], "o-", label=variant)
        ax.axhline(target, ls="--", c="grey", label=f"target {target:g}")
        ax.set_xlabel(f"fraction of the budget ({out['variants'][variant]['steps']} steps)")
        ax.set_ylabel(key.replace("_", " "))
        ax.set_xticks(fr)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{out['num']} {out['split']} masks, {sampling}; fractions below 1 are mid-run EMA checkpoints",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"curve: {path}", flush=True)


def write_sheet(store: str, work: Path, banks: list[str], path: Path, n: int = 12) -> None:
    """Mask | each bank's synthetic patch | the real parent, one row per mask (the banks' first n)."""
    from nasdm_aug.data.store import PatchStore
    from nasdm_aug.viz import colour_mask, contact_sheet

    stores = [PatchStore(work / "banks" / f"{b}.h5") for b in banks]
    first = stores[0]
    parents = first.meta("parent")[:n]
    with PatchStore(store) as real:
        table = real.type_table
        rows = []
        for i, parent in enumerate(parents):
            r = real.read([int(parent)])
            row = [colour_mask(r["inst"][0], r["type"][0], table)]
            for st in stores:
                if int(st.meta("parent")[i]) != int(parent):
                    sys.exit(f"Error: {st.path} patch {i} was made from another mask than {first.path}'s")
                row.append(st.read([i], keys=("image",))["image"][0])
            rows.append(row + [r["image"][0]])
    names = [b.split("@")[0] for b in banks]
    titles = [b.replace("@", " @") if names.count(n) > 1 else n for b, n in zip(banks, names)]
    contact_sheet(rows, path, column_titles=["mask", *titles, "real parent"], scale=2)
    print(f"sheet: {path}", flush=True)


def table(out: dict) -> str:
    b = out["baseline"]
    lines = [f"machine: {out['machine']}; budget {out['budget_min']:g} min per variant on one idle thread; "
             f"{out['num']} {out['split']} masks",
             f"baseline (real {b.get('fid')} FID, KID x1e3 {b.get('kid_x1e3'):.1f}, fidelity {b.get('fidelity_synthetic')})",
             "| variant @ sampling | steps | samples | samples/s | FID ratio | KID ratio | IS | fidelity ratio | "
             "speckle ratio | nuclei contrast |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in out["variants"].items():
        for tag, r in v.get("scores", {}).items():
            lines.append(f"| {tag} | {v['steps']} | {v['samples']} | {v['samples_per_s_idle']:.2f} | "
                         f"{r['fid_ratio']:.2f} | {r['kid_ratio']:.2f} | {r.get('is', float('nan')):.2f} | "
                         f"{r.get('fidelity_ratio', float('nan')):.2f} | {r['speckle_ratio']:.2f} | "
                         f"{r['nuclei_contrast']:.1f} |")
    for label, v in out.get("extra", {}).items():
        for tag, r in v["scores"].items():
            lines.append(f"| {tag} ({v['path']}) | - | - | - | {r['fid_ratio']:.2f} | {r['kid_ratio']:.2f} | "
                         f"{r.get('is', float('nan')):.2f} | {r.get('fidelity_ratio', float('nan')):.2f} | "
                         f"{r['speckle_ratio']:.2f} | {r['nuclei_contrast']:.1f} |")
    lines.append(f"real parents: nuclei contrast {out['real']['nuclei_contrast']:.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
