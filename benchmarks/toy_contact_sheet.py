"""Contact sheet of toy-tissue patches beside real Lizard crops (docs/toy_vs_real.png).

Run: .venv/bin/python benchmarks/toy_contact_sheet.py [--real ../shared/data/lizard-crops] [--out docs/toy_vs_real.png]
Rows: toy patches, their type overlays, and real Lizard crops (images only), 128 px each.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from skimage.segmentation import find_boundaries

from nasdm_aug.data.toy import generate_toy_tile
from nasdm_aug.types import LIZARD

REPO = Path(__file__).resolve().parents[1]
PATCH, COLS, LABEL_W, GAP = 128, 8, 150, 4


def toy_patches(seed: int, n: int, frequencies: str = "lizard") -> list:
    """``n`` 128-px crops (image, inst, type) from 512 x 512 toy tiles, tissue-rich ones first."""
    out, i = [], 0
    rng = np.random.default_rng(seed)
    while len(out) < n:
        tile = generate_toy_tile(np.random.default_rng([seed, i]), (512, 512), frequencies)
        i += 1
        for _ in range(3):
            y, x = rng.integers(0, 512 - PATCH, 2)
            crop = [a[y : y + PATCH, x : x + PATCH] for a in (tile.image, tile.inst, tile.type)]
            if (crop[1] > 0).mean() > 0.08 and len(out) < n:
                out.append(crop)
    return out


def overlay(image: np.ndarray, inst: np.ndarray, types: np.ndarray) -> np.ndarray:
    """Instance outlines coloured by type (LIZARD palette) over a faded image: uint8 [H, W, 3]."""
    pal = np.array(LIZARD.palette(), np.uint8)
    out = (image.astype(np.float32) * 0.6 + 255 * 0.4).astype(np.uint8)
    edge = find_boundaries(inst, mode="inner")
    out[edge] = pal[types[edge]]
    return out


def real_patches(folder: Path, n: int, seed: int) -> list:
    files = sorted(folder.glob("*.png"))
    pick = np.random.default_rng(seed).choice(len(files), min(n, len(files)), replace=False)
    return [np.asarray(Image.open(files[i]).convert("RGB").resize((PATCH, PATCH))) for i in sorted(pick)]


def sheet(rows: list[tuple[str, list]], legend: bool = True) -> Image.Image:
    """Labelled rows of patches; a type-colour legend underneath."""
    w = LABEL_W + COLS * (PATCH + GAP)
    h = len(rows) * (PATCH + GAP) + (28 if legend else 0)
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    for r, (label, patches) in enumerate(rows):
        y = r * (PATCH + GAP)
        for k, line in enumerate(label.split("\n")):
            draw.text((6, y + PATCH // 2 - 14 + 14 * k), line, fill="black")
        for c, p in enumerate(patches[:COLS]):
            img.paste(Image.fromarray(p), (LABEL_W + c * (PATCH + GAP), y))
    if legend:
        x, y = LABEL_W, len(rows) * (PATCH + GAP) + 8
        for t in LIZARD.ids:
            draw.rectangle([x, y, x + 12, y + 12], fill=tuple(LIZARD.colours[t - 1]))
            draw.text((x + 16, y), LIZARD.name_of(t), fill="black")
            x += 120
    return img


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--real", type=Path, default=REPO.parent / "shared" / "data" / "lizard-crops")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "toy_vs_real.png")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    toy = toy_patches(args.seed, 2 * COLS)
    rows = [
        ("toy tissue\n(generated)", [p[0] for p in toy[:COLS]]),
        ("toy labels\n(type outlines)", [overlay(*p) for p in toy[:COLS]]),
        ("toy tissue\n(generated)", [p[0] for p in toy[COLS:]]),
        ("real Lizard\n(colon, 20x)", real_patches(args.real, COLS, args.seed)),
        ("real Lizard\n(colon, 20x)", real_patches(args.real, 2 * COLS, args.seed + 1)[COLS:]),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet(rows).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
