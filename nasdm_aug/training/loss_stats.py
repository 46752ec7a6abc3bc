"""Training-loss statistics between two log lines: the sums of ``loss``, ``mse`` and ``vb`` per
timestep quartile and of the gradient norm, kept on the device (no per-step host sync) and reduced
over every rank when the trainer logs them."""

from __future__ import annotations

import numpy as np
import torch

from .distributed import all_reduce_sum

__all__ = ["TERMS"]

TERMS = ("loss", "mse", "vb")


class _LossStats:
    """Sums of loss/mse/vb per timestep quartile, kept on the device (no per-step host sync)."""

    def __init__(self, num_timesteps: int, device: torch.device) -> None:
        self.T = num_timesteps
        self.sums = torch.zeros(len(TERMS), 4, device=device, dtype=torch.float64)
        self.counts = torch.zeros(4, device=device, dtype=torch.float64)
        self.grad_norm = torch.zeros((), device=device, dtype=torch.float64)
        self.steps = 0

    def add(self, t: torch.Tensor, losses: dict[str, torch.Tensor], grad_norm: torch.Tensor) -> None:
        q = (t * 4 // self.T).clamp(max=3)
        for i, term in enumerate(TERMS):
            self.sums[i].index_add_(0, q, losses[term].detach().double())
        self.counts.index_add_(0, q, torch.ones_like(q, dtype=torch.float64))
        self.grad_norm += grad_norm.detach().double()
        self.steps += 1

    def summary(self) -> dict[str, float]:
        """Means over the interval and all ranks: ``loss``, ``mse``, ``vb``, ``<term>_q0..q3``, ``grad_norm``."""
        packed = all_reduce_sum(torch.cat([self.sums.flatten(), self.counts, self.grad_norm[None]]))
        vals = packed.tolist()
        n_world = max(1.0, float(torch.distributed.get_world_size()) if torch.distributed.is_initialized() else 1.0)
        sums = np.asarray(vals[: 4 * len(TERMS)]).reshape(len(TERMS), 4)
        counts = np.asarray(vals[4 * len(TERMS) : 4 * len(TERMS) + 4])
        out: dict[str, float] = {}
        for i, term in enumerate(TERMS):
            out[term] = float(sums[i].sum() / max(counts.sum(), 1.0))
            for q in range(4):
                if counts[q] > 0:
                    out[f"{term}_q{q}"] = float(sums[i, q] / counts[q])
        out["grad_norm"] = vals[-1] / max(self.steps, 1) / n_world
        return out
