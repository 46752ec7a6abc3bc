"""The learning-rate schedule both trainers use: a step decay, optionally after a linear warm-up.

The NASDM trainer counts optimisation steps (lr 1e-4, then 2e-5 after ``lr_drop_step``); the
HoVerNet trainer counts epochs within each phase (lr 1e-4, then 1e-5 after ``lr_decay_epoch``).
"""

from __future__ import annotations

__all__ = ["step_decay_lr"]


def step_decay_lr(t: int, lr: float, lr_after: float, drop_at: int | None, warmup: int = 0) -> float:
    """Learning rate at the 0-based step or epoch ``t``: ``lr`` until ``drop_at`` (None: never),
    ``lr_after`` from then on; during the first ``warmup`` steps it rises linearly to that value
    (``(t + 1) / warmup`` of it)."""
    base = lr_after if drop_at is not None and t >= drop_at else lr
    if warmup > 0 and t < warmup:
        return base * (t + 1) / warmup
    return base
