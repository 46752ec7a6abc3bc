"""Tiny random-weight NASDM run directories for tests (importable: tests/ is on sys.path)."""

from __future__ import annotations

import torch

from nasdm_aug.nets import build_model
from nasdm_aug.training.checkpoint import save_checkpoint
from nasdm_aug.training.config import DiffusionSettings, get_train_preset
from nasdm_aug.types import LIZARD

SIZE = 16
_NET = dict(image_size=SIZE, base_channels=8, channel_mults=(1, 2), attention_resolutions=(), head_channels=8,
            norm_groups=4, spade_hidden=8)


def make_run(path, kind, seed=0, size=SIZE):
    """A run directory holding a random-weight tiny ``kind`` model for ``size``-px patches."""
    net = {**_NET, "image_size": size}
    config = get_train_preset(kind, "tiny", **net).replace(diffusion=DiffusionSettings(steps=50))
    torch.manual_seed(seed)
    model = build_model(config.model)
    with torch.no_grad():  # random, not zero, output layers so samples depend on the condition
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    state = model.state_dict()
    info = {"store": "test", "split": "Train", "n_items": 0, "patch_size": size, "type_table": LIZARD.to_json()}
    save_checkpoint(path, 1, model_state=state, ema_state=state, trainer_state={"step": 1}, config=config,
                    data_info=info)
    return path
