"""Networks benchmark: mask round trip, model sizes, and PatchUNet against MONAI's SPADE U-Net.

Run: ``.venv/bin/python benchmarks/bench_nets.py [--part masks|size|speed|profile|all] [--size 64] [--threads 1]
[--dtypes fp32,bf16]``.
Prints markdown tables for benchmarks/RESULTS.md; ``--part masks`` also writes benchmarks/mask_roundtrip.png.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import numpy as np
import scipy.io
import torch
from PIL import Image
from skimage.measure import label
from skimage.segmentation import relabel_sequential
from torch.utils.flop_counter import FlopCounterMode

from hovernet.metrics import compute_pq
from nasdm_aug.data.masks import decode_mask, encode_mask
from nasdm_aug.data.toy import generate_toy_tile
from nasdm_aug.hardware import describe_machine
from nasdm_aug.nets import build_model, get_preset

HERE = Path(__file__).resolve().parent
CONSEP = HERE.parent.parent / "shared" / "data" / "consep" / "Train"


# ---------------------------------------------------------------- mask round trip
def _split_components(inst: np.ndarray) -> np.ndarray:
    out = np.zeros_like(inst)
    for i in range(1, int(inst.max()) + 1):
        parts = label(inst == i, connectivity=1)
        out[parts > 0] = parts[parts > 0] + out.max()
    return out


def _crops(crop: int = 128):
    """Yield (source, image or None, inst, type, n_types): every CoNSeP image on a 128-px grid, and toy tiles."""
    for mat in sorted((CONSEP / "Labels").glob("*.mat")):
        m = scipy.io.loadmat(mat)
        img = np.asarray(Image.open(CONSEP / "Images" / f"{mat.stem}.png").convert("RGB"))
        for y in range(0, m["inst_map"].shape[0] - crop + 1, crop):
            for x in range(0, m["inst_map"].shape[1] - crop + 1, crop):
                inst = relabel_sequential(m["inst_map"][y : y + crop, x : x + crop].astype(np.int32))[0]
                yield "consep", img[y : y + crop, x : x + crop], inst, m["type_map"][y : y + crop, x : x + crop], 4
    for seed in range(100):
        tile = generate_toy_tile(seed, size=(crop, crop))
        yield "toy", tile.image, relabel_sequential(tile.inst)[0], tile.type, 6


def _colour(inst: np.ndarray, like: np.ndarray | None = None) -> np.ndarray:
    """Random colours per id; with ``like``, each id takes the colour of its majority id there."""
    ref = inst if like is None else like
    lut = np.random.default_rng(0).integers(60, 255, (int(max(ref.max(), inst.max())) + 1, 3), dtype=np.uint8)
    lut[0] = 0
    if like is None:
        return lut[inst]
    own = np.zeros(int(inst.max()) + 1, dtype=np.int64)
    for i in range(1, len(own)):
        own[i] = np.bincount(like[inst == i]).argmax()
    return lut[own[inst]]


def bench_masks(min_size: int) -> None:
    stats: dict[str, dict[str, list]] = {}
    panels = []
    for source, img, inst, typ, n_types in _crops():
        inst = _split_components(inst)  # a crop can cut one nucleus into two pieces
        if min_size > 1:  # the decoder drops specks below min_size by design, so score without them
            sizes = np.bincount(inst.ravel())
            inst = relabel_sequential(np.where(sizes[inst] < min_size, 0, inst))[0]
            typ = np.where(inst > 0, typ, 0)
        if not inst.any():
            continue
        rep = encode_mask(inst, typ, n_types)
        out_inst, out_typ = decode_mask(rep, n_types, min_size=min_size)
        s = stats.setdefault(source, {"pq": [], "tp": 0, "fp": 0, "fn": 0, "iou": 0.0, "typ": []})
        r = compute_pq(out_inst, inst)
        s["pq"].append(r["pq"])
        s["tp"], s["fp"], s["fn"], s["iou"] = s["tp"] + r["tp"], s["fp"] + r["fp"], s["fn"] + r["fn"], s["iou"] + r["iou_sum"]
        s["typ"].append(float((out_typ == typ)[inst > 0].mean()))
        if len(panels) < 4 and source == "consep" and inst.max() > 25 or len(panels) == 4 and source == "toy":
            d = ((rep[-1] + 1) * 127.5).astype(np.uint8)
            e = ((rep[-2] + 1) * 127.5).astype(np.uint8)
            row = [img, _colour(inst), np.stack([e] * 3, -1), np.stack([d] * 3, -1), _colour(out_inst, inst)]
            panels.append(np.concatenate([np.pad(p, ((2, 2), (2, 2), (0, 0)), constant_values=255) for p in row], 1))
    print(f"| source | crops | nuclei | mean PQ per crop | min PQ | pooled PQ | pixel type agreement |  (min_size={min_size})")
    print("|---|---|---|---|---|---|---|")
    for source, s in stats.items():
        pooled = s["iou"] / (s["tp"] + 0.5 * s["fp"] + 0.5 * s["fn"])
        print(f"| {source} | {len(s['pq'])} | {s['tp'] + s['fn']} | {np.mean(s['pq']):.4f} | {np.min(s['pq']):.4f} | "
              f"{pooled:.4f} | {np.mean(s['typ']):.4f} |")  # fmt: skip
    out = HERE / "mask_roundtrip.png"
    Image.fromarray(np.concatenate(panels, 0)).save(out)
    print(f"figure: {out} (columns: image, instances, edge channel, distance channel, decoded instances)")


# ---------------------------------------------------------------- sizes
def _flops(fn) -> float:
    """FLOPs (2 per multiply-add) of one call of ``fn()``, counted by torch's FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def bench_size() -> None:
    print("| preset | kind | image | params (M) | GFLOP / sample (forward) |")
    print("|---|---|---|---|---|")
    for name in ("tiny", "paper"):
        for kind in ("patch", "mask"):
            cfg = get_preset(kind, name)
            with torch.device("meta"):  # counts shapes only: the paper model never needs memory or time
                model = build_model(cfg).eval()
                s = cfg.image_size
                x, t = torch.randn(1, cfg.in_channels, s, s), torch.zeros(1)
                cond = torch.randn(1, cfg.cond_channels, s, s) if kind == "patch" else torch.rand(1, cfg.n_types)
                flops = _flops(lambda: model(x, t, cond))
            params = sum(p.numel() for p in model.parameters())
            print(f"| {name} | {kind} | {s} px | {params / 1e6:.2f} | {flops / 1e9:.2f} |")


# ---------------------------------------------------------------- speed
def _monai_twin(cfg):
    try:
        import einops  # noqa: F401  MONAI imports it lazily, deep inside the first attention block
    except ImportError:
        raise SystemExit("bench_nets.py --part speed needs einops for MONAI's SPADE U-Net: .venv/bin/pip install -e '.[bench]'")
    from monai.networks.nets import SPADEDiffusionModelUNet

    sizes = [cfg.image_size >> i for i in range(len(cfg.channel_mults))]
    return SPADEDiffusionModelUNet(
        spatial_dims=2, in_channels=cfg.in_channels, out_channels=cfg.out_channels, label_nc=cfg.cond_channels,
        num_res_blocks=cfg.num_res_blocks, channels=[cfg.base_channels * m for m in cfg.channel_mults],
        attention_levels=[s in cfg.attention_resolutions for s in sizes], norm_num_groups=cfg.norm_groups,
        resblock_updown=True, num_head_channels=cfg.head_channels, spade_intermediate_channels=cfg.spade_hidden,
        use_flash_attention=True,
    )  # fmt: skip


def _step_fn(model, opt, x, t, cond, mode, dtype):
    call = (lambda: model(x, t, cond)) if not hasattr(model, "conv_in") else (lambda: model(x, t, seg=cond))

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            if mode == "fwd":
                with torch.no_grad():
                    return call()
            loss = call().float().square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run


def _time(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN primitive creation
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def _conv_ceiling(size: int, dtype: str, repeats: int) -> float:
    """GFLOP/s of a 3x3 conv 64->64 at batch 8, the faster of the NCHW and channels_last layouts."""
    flops = 2 * 8 * 64 * 64 * 9 * size * size
    best = 0.0
    for fmt in (torch.contiguous_format, torch.channels_last):
        conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(memory_format=fmt)
        x = torch.randn(8, 64, size, size).contiguous(memory_format=fmt)

        def run():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                conv(x)

        best = max(best, flops / _time(run, repeats) / 1e9)
    return best


def bench_speed(size: int, repeats: int, dtypes: tuple[str, ...] = ("fp32", "bf16")) -> None:
    """Both nets in both memory layouts (NCHW, channels_last), interleaved; ratios against MONAI's best layout."""
    cfg = get_preset("patch", "tiny", image_size=size, attention_resolutions=(size // 4,))
    torch.manual_seed(0)
    models = {"ours": build_model(cfg), "monai": _monai_twin(cfg)}
    x, t, c = torch.randn(1, 3, size, size), torch.zeros(1), torch.rand(1, cfg.cond_channels, size, size)
    with torch.no_grad():
        flops = _flops(lambda: models["ours"].eval()(x, t, c))
        flops_monai = _flops(lambda: models["monai"](x, t, seg=c))
    models["ours"].train()  # training mode, as the trainer runs it (condition dropout on)
    ceiling = {d: _conv_ceiling(size, d, repeats) for d in dtypes}
    print(f"3x3-conv ceiling (64->64, {size} px, batch 8, best layout): "
          + ", ".join(f"{d} {ceiling[d]:.1f} GFLOP/s" for d in dtypes))
    print(f"forward GFLOP/sample: PatchUNet {flops / 1e9:.2f}, MONAI SPADEDiffusionModelUNet {flops_monai / 1e9:.2f}")
    print("ms/sample, median of the interleaved repeats; NHWC = channels_last model and input")
    print("| mode | dtype | batch | ours NCHW | ours NHWC | MONAI NCHW | MONAI NHWC | MONAI best / ours best | ours best GFLOP/s | % of conv ceiling |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows, speedup = {}, {}
    for mode in ("fwd", "fwd+bwd+step"):
        for batch in (4, 8):
            x, t = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
            cond = torch.rand(batch, cfg.cond_channels, size, size)
            fns = {}
            for dtype in dtypes:
                for layout, fmt in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
                    for name, model in models.items():
                        m = copy.deepcopy(model).to(memory_format=fmt)  # .to() converts in place
                        opt = torch.optim.AdamW(m.parameters(), 1e-4, fused=True)  # as the trainer
                        fns[(dtype, name, layout)] = _step_fn(m, opt, x.contiguous(memory_format=fmt), t,
                                                              cond.contiguous(memory_format=fmt), mode, dtype)
            times = {k: [] for k in fns}
            # interleave all variants (both dtypes too), so drifts of the shared CPU's speed hit
            # every ratio's numerator and denominator alike
            for _ in range(repeats):
                for k, fn in fns.items():
                    times[k].append(_time(fn, 1) / batch)
            med = {k: statistics.median(v) for k, v in times.items()}
            ours = {d: min(med[(d, "ours", "NCHW")], med[(d, "ours", "NHWC")]) for d in dtypes}
            if len(dtypes) == 2:
                speedup[(mode, batch)] = ours["fp32"] / ours["bf16"]
            for dtype in dtypes:
                theirs = min(med[(dtype, "monai", "NCHW")], med[(dtype, "monai", "NHWC")])
                gfs = flops * (1 if mode == "fwd" else 3) / ours[dtype] / 1e9  # backward ~ 2x forward
                cells = " | ".join(f"{med[(dtype, *k)] * 1e3:.1f}"
                                   for k in (("ours", "NCHW"), ("ours", "NHWC"), ("monai", "NCHW"), ("monai", "NHWC")))
                rows[(mode, dtype, batch)] = (f"| {mode} | {dtype} | {batch} | {cells} | {theirs / ours[dtype]:.2f} | "
                                              f"{gfs:.1f} | {100 * gfs / ceiling[dtype]:.0f}% |")
    for mode in ("fwd", "fwd+bwd+step"):
        for dtype in dtypes:
            for batch in (4, 8):
                print(rows[(mode, dtype, batch)])
    if speedup:
        print("bf16 autocast speed-up over fp32, ours, best layout of each: " + ", ".join(
            f"{mode} batch {b}: {speedup[(mode, b)]:.2f}x" for mode in ("fwd", "fwd+bwd+step") for b in (4, 8)))


# op name -> category for the side-by-side profile; the first matching fragment wins
_CATEGORIES = (
    ("convolution", ("conv", "mkldnn_convolution")),
    ("group norm", ("group_norm", "GroupNorm")),
    ("attention", ("attention", "softmax", "bmm", "baddbmm", "addmm", "matmul", "linear", "mm")),
    ("optimizer", ("adam", "Adam", "_foreach")),
    ("copies and layout", ("copy_", "clone", "contiguous", "cat", "to_copy", "empty_strided", "as_strided",
                           "upsample", "pad", "index")),
    ("elementwise", ("add", "mul", "silu", "sigmoid", "relu", "threshold", "div", "sub", "neg", "pow", "square",
                     "mean", "sum", "fill", "where", "exp", "Modulate", "addcmul", "zero")),
)


def _category(name: str) -> str:
    for cat, frags in _CATEGORIES:
        if any(f in name for f in frags):
            return cat
    return "other"


def bench_profile(size: int, batch: int = 8, steps: int = 3, dtypes: tuple[str, ...] = ("fp32", "bf16")) -> None:
    """Where a training step's time goes, PatchUNet and MONAI's SPADE U-Net side by side, both layouts.

    torch.profiler self CPU times, summed per op category, ms per step; then each network's top ops
    in its faster layout. The profiler's own overhead inflates small ops alike for both networks."""
    from torch.profiler import ProfilerActivity, profile

    cfg = get_preset("patch", "tiny", image_size=size, attention_resolutions=(size // 4,))
    torch.manual_seed(0)
    nets = {"ours": build_model(cfg).train(), "monai": _monai_twin(cfg)}
    x, t = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    cond = torch.rand(batch, cfg.cond_channels, size, size)
    for dtype in dtypes:
        cols, tops = {}, {}
        for layout, fmt in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
            for name, net in nets.items():
                m = copy.deepcopy(net).to(memory_format=fmt)
                opt = torch.optim.AdamW(m.parameters(), 1e-4, fused=True)
                step = _step_fn(m, opt, x.contiguous(memory_format=fmt), t, cond.contiguous(memory_format=fmt),
                                "fwd+bwd+step", dtype)
                step()
                t0 = time.perf_counter()
                for _ in range(steps):
                    step()
                wall = (time.perf_counter() - t0) / steps
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    for _ in range(steps):
                        step()
                per = {}
                events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
                for e in events:
                    per[_category(e.key)] = per.get(_category(e.key), 0.0) + e.self_cpu_time_total / steps / 1e3
                cols[(name, layout)] = (wall * 1e3, per)
                tops[(name, layout)] = sorted(events, key=lambda e: -e.self_cpu_time_total)[:10]
        keys = list(cols)
        print(f"\n{dtype}, batch {batch}, {size} px: ms per training step (wall, unprofiled), then profiler self "
              "times by op category")
        print("| | " + " | ".join(f"{n} {lay}" for n, lay in keys) + " |")
        print("|---|" + "---|" * len(keys))
        print("| wall | " + " | ".join(f"{cols[k][0]:.1f}" for k in keys) + " |")
        cats = [c for c, _ in _CATEGORIES] + ["other"]
        for c in cats:
            print(f"| {c} | " + " | ".join(f"{cols[k][1].get(c, 0.0):.1f}" for k in keys) + " |")
        print("| profiled total | " + " | ".join(f"{sum(cols[k][1].values()):.1f}" for k in keys) + " |")
        for name in nets:
            best = min(("NCHW", "NHWC"), key=lambda lay: cols[(name, lay)][0])
            total = sum(cols[(name, best)][1].values()) * steps * 1e3
            print(f"{name} {best} ({dtype}), top ops by self time:")
            for e in tops[(name, best)]:
                print(f"  {e.key[:60]:60s} {100 * e.self_cpu_time_total / total:5.1f}%  ({e.count // steps} calls/step)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=["masks", "size", "speed", "profile", "all"], default="all")
    parser.add_argument("--size", type=int, default=64, help="image size for the speed part")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the dev box is 2 shared cores)")
    parser.add_argument("--min-size", type=int, default=10, help="decode_mask min_size for the round trip")
    parser.add_argument("--dtypes", default="fp32,bf16",
                        help="comma-separated, of fp32 and bf16, for the speed and profile parts (bf16 is slow "
                             "where it is emulated)")
    args = parser.parse_args()
    dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
    if not dtypes or any(d not in ("fp32", "bf16") for d in dtypes):
        parser.error(f"--dtypes takes fp32 and/or bf16, got {args.dtypes!r}")
    torch.set_num_threads(args.threads)
    print(f"machine: {describe_machine()}; {args.threads} thread(s)")
    if args.part in ("masks", "all"):
        bench_masks(args.min_size)
    if args.part in ("size", "all"):
        bench_size()
    if args.part in ("speed", "all"):
        bench_speed(args.size, args.repeats, dtypes)
    if args.part == "profile":
        bench_profile(args.size, dtypes=dtypes)


if __name__ == "__main__":
    main()
