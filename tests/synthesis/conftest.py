"""Tiny random-weight NASDM runs (16 px, 50 diffusion steps) and a small real store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasdm_aug.data.store import PatchStoreWriter
from nasdm_aug.nets import build_model
from nasdm_aug.training.checkpoint import save_checkpoint
from nasdm_aug.training.config import DiffusionSettings, get_train_preset
from nasdm_aug.types import LIZARD

SIZE = 16
_NET = dict(image_size=SIZE, base_channels=8, channel_mults=(1, 2), attention_resolutions=(), head_channels=8,
            norm_groups=4, spade_hidden=8)


def make_run(path, kind, seed=0):
    config = get_train_preset(kind, "tiny", **_NET).replace(diffusion=DiffusionSettings(steps=50))
    torch.manual_seed(seed)
    model = build_model(config.model)
    with torch.no_grad():  # random, not zero, output layers so samples depend on the condition
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    state = model.state_dict()
    info = {"store": "test", "split": "Train", "n_items": 0, "patch_size": SIZE, "type_table": LIZARD.to_json()}
    save_checkpoint(path, 1, model_state=state, ema_state=state, trainer_state={"step": 1}, config=config,
                    data_info=info)
    return path


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return make_run(root / "mask", "mask", 1), make_run(root / "patch", "patch", 2)


def _disk_mask(rng, size):
    inst = np.zeros((size, size), np.int32)
    type_map = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for k in range(1, int(rng.integers(1, 4)) + 1):
        cy, cx, r = rng.integers(3, size - 3), rng.integers(3, size - 3), rng.integers(2, 4)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        inst[disk] = k
        type_map[disk] = rng.integers(1, 7)
    return inst, type_map


@pytest.fixture(scope="session")
def real_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("real") / "real.h5"
    rng = np.random.default_rng(0)
    with PatchStoreWriter(path, patch_size=SIZE, type_table=LIZARD) as w:
        for i in range(10):
            inst, type_map = _disk_mask(rng, SIZE)
            image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            w.append(image, inst, type_map, source=f"img{i % 5}", y=i, x=0, split="R2" if i % 5 < 2 else "Train")
        w.set_splits({"R2": ["img0", "img1"], "Train": ["img2", "img3", "img4"], "R1": ["img2"]})
    return path
