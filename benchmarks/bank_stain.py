"""The haematoxylin of several banks' mask nuclei against the tissue between them, beside real patches.

    .venv/bin/python benchmarks/bank_stain.py --real consep.h5:R1 \\
        --bank shipped=s1-shipped.h5 --bank other=s1-other.h5 [--max-patches N] [--json out.json] \\
        [--plot profiles.png] [--sheet sheet.png --sheet-rows 8]

One row per bank: mean haematoxylin (optical density) of its mask-nucleus pixels, of its pixels
more than 3 px from every nucleus, their ratio (the contrast), and each of those against the real
split's, and the dark blobs per patch off every mask nucleus, at the real split's median nucleus
haematoxylin (``nasdm_aug.metrics.stain``; ``nasdm-aug evaluate`` reports the same for one bank, with
FID and the rest). No network runs: a bank of 889 64-px patches takes a few seconds.

``--plot``: every bank's haematoxylin against the distance to the nucleus boundary, with the real
split's. ``--sheet``: the mask and each bank's patch for ``--sheet-rows`` masks drawn with
``--seed`` from the first bank (banks made from the same masks in the same order, as S1 banks of
one split are, line up row by row; no real patch is shown).
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
from nasdm_aug.metrics.stain import (  # noqa: E402
    compare_stain,
    nucleus_haematoxylin,
    plot_profiles,
    store_off_mask_blobs,
    store_stain,
)


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
    ap.add_argument("--plot", default=None, help="PNG of the haematoxylin profiles")
    ap.add_argument("--sheet", default=None, help="PNG: mask and each bank's patch, row by row")
    ap.add_argument("--sheet-rows", type=int, default=8)
    args = ap.parse_args(argv)
    path, split = parse_store_arg(args.real)
    real_store = PatchStore(path)
    real_idx = _indices(real_store, split, args.max_patches, args.seed)
    real = store_stain(real_store, real_idx)
    threshold = nucleus_haematoxylin(real_store, real_idx)
    real["off_mask_blobs"] = float(store_off_mask_blobs(real_store, real_idx, threshold).mean())
    rows = {}
    print(f"real {args.real}: {real['n']} patches; machine {platform.machine()}; blobs darker than {threshold:.4f}",
          flush=True)
    print("| bank | patches | nuclei | tissue > 3 px | contrast | nuclei ratio | tissue ratio | contrast ratio | "
          "blobs off mask / patch |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| real {args.real} | {real['n']} | {real['nuclei']:.4f} | {real['stroma']:.4f} | {real['contrast']:.2f} | "
          f"1 | 1 | 1 | {real['off_mask_blobs']:.2f} |")
    for item in args.bank:
        if "=" not in item:
            ap.error(f"--bank {item!r}: expected LABEL=BANK.h5")
        label, bank_arg = item.split("=", 1)
        bpath, bsplit = parse_store_arg(bank_arg)
        if not Path(bpath).is_file():
            ap.error(f"--bank {item}: {bpath} not found")
        bank = PatchStore(bpath)
        bank_idx = _indices(bank, bsplit, args.max_patches, args.seed)
        c = compare_stain(store_stain(bank, bank_idx), real)
        s, r = c["synthetic"], c["ratio"]
        s["off_mask_blobs"] = float(store_off_mask_blobs(bank, bank_idx, threshold).mean())
        rows[label] = c
        print(f"| {label} | {s['n']} | {s['nuclei']:.4f} | {s['stroma']:.4f} | {s['contrast']:.2f} | "
              f"{r['nuclei']:.2f} | {r['stroma']:.2f} | {r['contrast']:.2f} | {s['off_mask_blobs']:.2f} |", flush=True)
    out = {"real": real, "banks": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    if args.plot:
        _plot(real, rows, args.real, args.plot)
    if args.sheet:
        _sheet([b.split("=", 1) for b in args.bank], args.sheet_rows, args.seed, args.sheet)
    return out


def _plot(real: dict, rows: dict, real_label: str, path: str) -> None:
    plot_profiles((f"real {real_label}", real["profile"]),
                  [(f"{label} (tissue {c['ratio']['stroma']:.2f}x real)", c["synthetic"]["profile"])
                   for label, c in rows.items()], path)


def _sheet(banks: list[list[str]], n: int, seed: int, path: str) -> None:
    from nasdm_aug.viz import colour_mask, contact_sheet

    stores = [(label, PatchStore(parse_store_arg(arg)[0]), parse_store_arg(arg)[1]) for label, arg in banks]
    first, split = stores[0][1], stores[0][2]
    pick = _indices(first, split, n, seed)
    d0 = first.read(pick, keys=("inst", "type"))
    cells = [[colour_mask(d0["inst"][k], d0["type"][k], first.type_table)] for k in range(len(pick))]
    for _, store, _ in stores:
        images = store.read(pick, keys=("image",))["image"]
        for k in range(len(pick)):
            cells[k].append(images[k])
    contact_sheet(cells, path, column_titles=["mask", *(label for label, _, _ in stores)])


if __name__ == "__main__":
    main()
