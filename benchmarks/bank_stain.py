"""The haematoxylin of several banks' mask nuclei against the tissue between them, beside real patches.

    .venv/bin/python benchmarks/bank_stain.py --real consep.h5:R1 \\
        --bank shipped=s1-shipped.h5 --bank other=s1-other.h5 [--max-patches N] [--json out.json]

One row per bank: mean haematoxylin (optical density) of its mask-nucleus pixels, of its pixels
more than 3 px from every nucleus, their ratio (the contrast), and each of those against the real
split's (``nasdm_aug.metrics.stain``; ``nasdm-aug evaluate`` reports the same for one bank, with
FID and the rest). No network runs: a bank of 889 64-px patches takes a few seconds.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nasdm_aug.data.store import PatchStore, parse_store_arg  # noqa: E402
from nasdm_aug.metrics.stain import compare_stain, store_stain  # noqa: E402


def _indices(store: PatchStore, split: str | None, limit: int, seed: int) -> np.ndarray:
    idx = store.indices(split)
    if limit and len(idx) > limit:
        idx = np.sort(np.random.default_rng(seed).permutation(idx)[:limit])
    return idx


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", required=True, metavar="STORE[:SPLIT]")
    ap.add_argument("--bank", action="append", default=[], metavar="LABEL=BANK.h5[:SPLIT]", required=True)
    ap.add_argument("--max-patches", type=int, default=0, help="at most N patches per store, drawn with --seed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args(argv)
    path, split = parse_store_arg(args.real)
    real_store = PatchStore(path)
    real = store_stain(real_store, _indices(real_store, split, args.max_patches, args.seed))
    rows = {}
    print(f"real {args.real}: {real['n']} patches; machine {platform.machine()}", flush=True)
    print("| bank | patches | nuclei | tissue > 3 px | contrast | nuclei ratio | tissue ratio | contrast ratio |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| real {args.real} | {real['n']} | {real['nuclei']:.4f} | {real['stroma']:.4f} | {real['contrast']:.2f} | 1 | 1 | 1 |")
    for item in args.bank:
        if "=" not in item:
            ap.error(f"--bank {item!r}: expected LABEL=BANK.h5")
        label, bank_arg = item.split("=", 1)
        bpath, bsplit = parse_store_arg(bank_arg)
        if not Path(bpath).is_file():
            ap.error(f"--bank {item}: {bpath} not found")
        bank = PatchStore(bpath)
        c = compare_stain(store_stain(bank, _indices(bank, bsplit, args.max_patches, args.seed)), real)
        s, r = c["synthetic"], c["ratio"]
        rows[label] = c
        print(f"| {label} | {s['n']} | {s['nuclei']:.4f} | {s['stroma']:.4f} | {s['contrast']:.2f} | "
              f"{r['nuclei']:.2f} | {r['stroma']:.2f} | {r['contrast']:.2f} |", flush=True)
    out = {"real": real, "banks": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
