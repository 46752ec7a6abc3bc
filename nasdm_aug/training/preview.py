"""Sample grids written while a NASDM model trains (Shrivastava & Fletcher 2023): a few samples
from fixed conditions with a fast sampler, masks shown in the type table's colours."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from skimage.segmentation import find_boundaries
from torch import nn

from nasdm_aug.data.masks import decode_mask
from nasdm_aug.diffusion.gaussian import GaussianDiffusion
from nasdm_aug.sampling import SamplerOptions, sample
from nasdm_aug.types import NucleiTypeTable
from nasdm_aug.utils import atomic_output

from .data import x_to_image

__all__ = ["render_images", "render_masks", "render_condition", "save_grid", "SamplePreview"]


def render_images(x: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1] [N, 3, H, W] -> uint8 [N, H, W, 3]."""
    return x_to_image(x.detach().float().cpu()).numpy()


def _colour_maps(inst: np.ndarray, type_map: np.ndarray, table: NucleiTypeTable) -> np.ndarray:
    palette = np.asarray(table.palette(), dtype=np.uint8)
    rgb = palette[type_map]
    rgb[find_boundaries(inst, mode="inner")] //= 3  # darken each nucleus' rim so touching ones show apart
    return rgb


def render_masks(x: torch.Tensor, table: NucleiTypeTable) -> np.ndarray:
    """Mask representations [N, C, H, W] -> decoded type colours with instance rims, uint8 [N, H, W, 3]."""
    out = []
    for rep in x.detach().float().cpu():
        inst, type_map = decode_mask(rep, table.n_types)
        out.append(_colour_maps(inst, type_map, table))
    return np.stack(out)


def render_condition(cond: torch.Tensor, table: NucleiTypeTable) -> np.ndarray:
    """Patch conditions [N, 1 + n_types + 1, H, W] -> type colours with the edge channel in white."""
    palette = np.asarray(table.palette(), dtype=np.uint8)
    cond = cond.detach().float().cpu()
    rgb = palette[cond[:, : table.n_types + 1].argmax(1).numpy()]
    rgb[cond[:, table.n_types + 1].numpy() > 0.5] = 255
    return rgb


def save_grid(columns: Sequence[np.ndarray], path: str | os.PathLike, pad: int = 2) -> Path:
    """Write a PNG with one row per sample and one column per panel, atomically.

    Args:
        columns: panels, each uint8 [N, H, W, 3] with the same N, H, W.
        path: the PNG file (replaced if present).
        pad: white pixels between tiles.
    """
    n, h, w, _ = columns[0].shape
    grid = np.full((n * (h + pad) + pad, len(columns) * (w + pad) + pad, 3), 255, np.uint8)
    for j, col in enumerate(columns):
        for i in range(n):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = col[i]
    path = Path(path)
    with atomic_output(path, overwrite=True, suffix=".partial.png") as tmp:
        Image.fromarray(grid).save(tmp)
    return path


class SamplePreview:
    """Callable ``preview(model, step)`` that samples from fixed conditions and saves a grid.

    Columns: for the patch model, the condition | the real patch | the sample; for the mask model,
    the real mask | the decoded sample (conditioned on the real patch's type presence).

    Args:
        diffusion: the trained process.
        kind: ``"mask"`` or ``"patch"``.
        cond: fixed conditions, [K, ...] (patch conditions or presence vectors).
        x_real: the matching real x, [K, C, H, W].
        table: the type table (for colours and decoding).
        out_dir: the run directory; grids go to ``samples/step_XXXXXXXX.png``.
        steps: sampler steps (few: it is a progress check).
        sampler: sampler name (None for the sampling module's default).
        seed: sampling seed (fixed, so grids at different steps compare).
    """

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        kind: str,
        cond: torch.Tensor,
        x_real: torch.Tensor,
        table: NucleiTypeTable,
        out_dir: str | os.PathLike,
        steps: int = 20,
        sampler: str | None = None,
        seed: int = 0,
    ) -> None:
        self.diffusion, self.kind, self.table = diffusion, kind, table
        self.cond, self.x_real = cond, x_real
        self.dir = Path(out_dir) / "samples"
        self.seed = seed
        self.options = SamplerOptions(sampler, steps=steps) if sampler else SamplerOptions(steps=steps)

    @torch.no_grad()
    def __call__(self, model: nn.Module, step: int) -> Path:
        """Sample with ``model`` (on its own device) and write the grid for ``step``."""
        device = next(model.parameters()).device
        reuse = model.reuse_condition() if hasattr(model, "reuse_condition") else contextlib.nullcontext()
        with reuse:  # one condition for the whole run: its SPADE maps are made once
            x = sample(model, tuple(self.x_real.shape), {"cond": self.cond.to(device)}, diffusion=self.diffusion,
                       options=self.options, seed=self.seed, device=device)
        if self.kind == "patch":
            cols = [render_condition(self.cond, self.table), render_images(self.x_real), render_images(x)]
        else:
            cols = [render_masks(self.x_real, self.table), render_masks(x, self.table)]
        return save_grid(cols, self.dir / f"step_{step:08d}.png")
