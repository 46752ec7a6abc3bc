"""Pictures people look at: masks in the type colours and labelled contact sheets (PNG)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from nasdm_aug.types import NucleiTypeTable
from nasdm_aug.utils import atomic_output

__all__ = ["colour_mask", "overlay_mask", "contact_sheet"]


def _boundaries(inst: np.ndarray) -> np.ndarray:
    edge = np.zeros(inst.shape, bool)
    edge[1:] |= inst[1:] != inst[:-1]
    edge[:-1] |= inst[1:] != inst[:-1]
    edge[:, 1:] |= inst[:, 1:] != inst[:, :-1]
    edge[:, :-1] |= inst[:, 1:] != inst[:, :-1]
    return edge & (inst > 0)


def colour_mask(inst: np.ndarray, type_map: np.ndarray, table: NucleiTypeTable) -> np.ndarray:
    """Paint a mask in its type colours, instance outlines darkened so touching nuclei show apart.

    Args:
        inst: instance map [H, W].
        type_map: type map [H, W], ids 0..n_types.
        table: the type table giving the colours.

    Returns:
        uint8 RGB [H, W, 3].
    """
    palette = np.asarray(table.palette(), np.uint8)
    rgb = palette[np.clip(type_map, 0, table.n_types)].copy()
    rgb[_boundaries(inst)] //= 3
    return rgb


def overlay_mask(image: np.ndarray, inst: np.ndarray, type_map: np.ndarray, table: NucleiTypeTable) -> np.ndarray:
    """Draw each instance's outline over an RGB image in its type colour; uint8 [H, W, 3]."""
    palette = np.asarray(table.palette(), np.uint8)
    out = image.copy()
    edge = _boundaries(inst)
    out[edge] = palette[np.clip(type_map, 0, table.n_types)][edge]
    return out


def contact_sheet(
    rows: Sequence[Sequence[np.ndarray | None]],
    path: str | os.PathLike,
    *,
    column_titles: Sequence[str] = (),
    row_titles: Sequence[str] = (),
    scale: int = 2,
    pad: int = 4,
) -> Path:
    """Save a grid of RGB tiles as one PNG (written atomically).

    Args:
        rows: rows of uint8 [h, w, 3] tiles; None leaves a cell blank. Tiles may differ in size.
        path: output PNG path.
        column_titles: a title above each column.
        row_titles: a title left of each row.
        scale: nearest-neighbour magnification, so small patches stay readable.
        pad: pixels between cells.

    Returns:
        The path written.
    """
    tiles = [t for row in rows for t in row if t is not None]
    if not tiles:
        raise ValueError("contact_sheet needs at least one tile")
    cell_h = max(t.shape[0] for t in tiles) * scale
    cell_w = max(t.shape[1] for t in tiles) * scale
    n_cols = max(len(r) for r in rows)
    top = 16 if column_titles else 0
    left = 8 + 7 * max((len(s) for s in row_titles), default=0) if row_titles else 0
    sheet = Image.new("RGB", (left + n_cols * (cell_w + pad) + pad, top + len(rows) * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(column_titles):
        draw.text((left + pad + c * (cell_w + pad), 2), str(title), fill="black")
    for r, row in enumerate(rows):
        y = top + pad + r * (cell_h + pad)
        if r < len(row_titles):
            draw.text((4, y + cell_h // 2 - 5), str(row_titles[r]), fill="black")
        for c, tile in enumerate(row):
            if tile is None:
                continue
            img = Image.fromarray(np.ascontiguousarray(tile, np.uint8)).resize(
                (tile.shape[1] * scale, tile.shape[0] * scale), Image.NEAREST)
            sheet.paste(img, (left + pad + c * (cell_w + pad), y))
    path = Path(path)
    with atomic_output(path, overwrite=True) as tmp:
        sheet.save(tmp, format="PNG")
    return path
