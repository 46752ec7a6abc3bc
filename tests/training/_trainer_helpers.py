"""Helpers for the trainer tests: a tiny PatchStore of disc nuclei, a stand-in network, small configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.types import CONSEP

PATCH = 32


def _disc_patch(rng: np.random.Generator, n_types: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One patch with a few disc nuclei: pink background, purple nuclei darker by type."""
    yy, xx = np.mgrid[:PATCH, :PATCH]
    inst = np.zeros((PATCH, PATCH), np.int32)
    type_map = np.zeros((PATCH, PATCH), np.uint8)
    quadrants = rng.permutation(4)[: rng.integers(2, 5)]  # one disc per 16-px quadrant: no overlaps
    for i, q in enumerate(quadrants, start=1):
        r = int(rng.integers(3, 6))
        cy, cx = 16 * (q // 2) + int(rng.integers(r + 1, 16 - r)), 16 * (q % 2) + int(rng.integers(r + 1, 16 - r))
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        inst[disc] = i
        type_map[disc] = rng.integers(1, n_types + 1)
    image = np.empty((PATCH, PATCH, 3), np.uint8)
    image[:] = (230, 170, 200)
    image[inst > 0] = np.stack([100 - 10 * type_map, 40 + 5 * type_map, 150 - 5 * type_map], -1)[inst > 0]
    return image, inst, type_map


def write_store(path: Path, n_images: int = 3, per_image: int = 2, seed: int = 0) -> Path:
    """A CoNSeP-typed store of ``n_images * per_image`` 32-px patches; split Train = all but the last image."""
    rng = np.random.default_rng(seed)
    names = [f"img{i}" for i in range(n_images)]
    with PatchStoreWriter(path, patch_size=PATCH, type_table=CONSEP) as w:
        for name in names:
            for k in range(per_image):
                image, inst, type_map = _disc_patch(rng, CONSEP.n_types)
                w.append(image, inst, type_map, source=name, y=0, x=k * PATCH)
        w.set_splits({"Train": names[:-1], "Test": names[-1:]})
    return path


class StandInNet(nn.Module):
    """A 2-layer conv net with ``forward(x, t, cond)`` and condition dropout, for trainer mechanics.

    Dropout draws from the global RNG, as the real nets do, so resume tests cover it.
    """

    def __init__(self, in_channels: int = 3, cond_channels: int = 6, spatial_cond: bool = True, cond_drop_prob: float = 0.2):
        super().__init__()
        self.spatial_cond, self.cond_drop_prob = spatial_cond, cond_drop_prob
        self.cond_proj = nn.Conv2d(cond_channels, 8, 1) if spatial_cond else nn.Linear(cond_channels, 8)
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.t_proj = nn.Linear(1, 8)
        self.conv2 = nn.Conv2d(8, 2 * in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self.training and self.cond_drop_prob > 0:
            keep = (torch.rand(x.shape[0], device=x.device) >= self.cond_drop_prob).float()
            cond = cond * keep.view(-1, *([1] * (cond.ndim - 1)))
        c = self.cond_proj(cond)
        c = c if self.spatial_cond else c[:, :, None, None]
        h = torch.relu(self.conv1(x) + c + self.t_proj(t.float()[:, None] / 1000.0)[:, :, None, None])
        return self.conv2(h)


SMALL_NET = dict(
    n_types=CONSEP.n_types, image_size=PATCH, base_channels=16, channel_mults=(1, 2), attention_resolutions=(16,),
    head_channels=16, spade_hidden=16,
)


def small_config(kind: str, **changes):
    """A TrainConfig for the tiny store: a 0.2-0.4 M-parameter U-Net, no grids, frequent logs."""
    from nasdm_aug.training.config import get_train_preset

    base = get_train_preset(kind, "tiny", **SMALL_NET)
    return base.replace(**{**dict(batch_size=2, steps=6, log_every=1, ckpt_every=3, sample_every=0), **changes})
