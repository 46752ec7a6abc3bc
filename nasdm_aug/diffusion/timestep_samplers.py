"""Timestep samplers for training: uniform, and the loss-aware importance sampler of
Nichol & Dhariwal (2021, improved DDPM, eq. 17-18), after improved-diffusion's resample.py."""

from __future__ import annotations

import abc

import numpy as np
import torch
import torch.distributed as dist

from nasdm_aug.utils import unknown_name

from .gaussian import GaussianDiffusion

__all__ = [
    "ScheduleSampler",
    "UniformSampler",
    "LossSecondMomentResampler",
    "create_named_schedule_sampler",
    "SCHEDULE_SAMPLERS",
]


class ScheduleSampler(abc.ABC):
    """Draws timesteps t with probabilities p_t and importance weights 1 / (T p_t).

    Multiplying the per-sample losses by the weights keeps the objective unbiased.
    """

    def __init__(self, diffusion: GaussianDiffusion) -> None:
        self.diffusion = diffusion

    @abc.abstractmethod
    def weights(self) -> np.ndarray:
        """Unnormalised non-negative sampling weights, shape [T]."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What the next draws depend on beyond the constructor arguments, as CPU tensors (for
        ``torch.save(weights_only=True)``); empty for a sampler that keeps no history."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            ValueError: keys this sampler does not have.
        """
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state; got keys {sorted(state)}")

    def sample(
        self, batch_size: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw a batch of timesteps.

        Args:
            batch_size: N.
            device: where the returned tensors live.
            generator: optional CPU ``torch.Generator`` for reproducible draws.

        Returns:
            (t, weights): long timesteps [N] and float32 importance weights [N].
        """
        w = np.asarray(self.weights(), dtype=np.float64)
        p = torch.from_numpy(w / w.sum())
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (len(p) * p[t])
        return t.to(device), weights.float().to(device)


class UniformSampler(ScheduleSampler):
    """p_t = 1 / T; every weight is 1."""

    def weights(self) -> np.ndarray:
        return np.ones(self.diffusion.num_timesteps)


class LossSecondMomentResampler(ScheduleSampler):
    """p_t proportional to sqrt(E[L_t^2]) over the last ``history_per_term`` losses per t.

    Uniform until every timestep has a full history; ``uniform_prob`` of the mass stays uniform.

    Args:
        diffusion: the process (for T).
        history_per_term: losses remembered per timestep.
        uniform_prob: mixing weight of the uniform distribution.
    """

    def __init__(self, diffusion: GaussianDiffusion, history_per_term: int = 10, uniform_prob: float = 0.001) -> None:
        super().__init__(diffusion)
        if history_per_term < 1 or not 0.0 <= uniform_prob <= 1.0:
            raise ValueError(f"need history_per_term >= 1 and uniform_prob in [0, 1], got {history_per_term}, {uniform_prob}")
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self._loss_history = np.zeros((diffusion.num_timesteps, history_per_term), dtype=np.float64)
        self._loss_counts = np.zeros(diffusion.num_timesteps, dtype=np.int64)

    def weights(self) -> np.ndarray:
        if not self._warmed_up():
            return np.ones(self.diffusion.num_timesteps, dtype=np.float64)
        w = np.sqrt(np.mean(self._loss_history**2, axis=-1))
        w /= w.sum()
        return w * (1 - self.uniform_prob) + self.uniform_prob / len(w)

    def _warmed_up(self) -> bool:
        return bool((self._loss_counts == self.history_per_term).all())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The loss history [T, history_per_term] and the losses seen per timestep [T] (copies)."""
        return {"loss_history": torch.from_numpy(self._loss_history.copy()),
                "loss_counts": torch.from_numpy(self._loss_counts.copy())}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the loss history of :meth:`state_dict` (tensors or arrays, on any device).

        Raises:
            ValueError: a missing or unexpected key, or arrays of another shape than this
                sampler's (another number of timesteps or ``history_per_term``).
        """
        want = {"loss_history": self._loss_history, "loss_counts": self._loss_counts}
        if set(state) != set(want):
            raise ValueError(f"loss-second-moment sampler state needs keys {sorted(want)}, got {sorted(state)}")
        arrays = {k: np.asarray(torch.as_tensor(v).cpu()) for k, v in state.items()}
        for key, arr in arrays.items():
            if arr.shape != want[key].shape:
                raise ValueError(f"loss-second-moment sampler state: {key} has shape {arr.shape}, "
                                 f"this sampler needs {want[key].shape}")
        self._loss_history[...] = arrays["loss_history"]
        self._loss_counts[...] = arrays["loss_counts"]

    def update_with_local_losses(self, local_ts: torch.Tensor, local_losses: torch.Tensor) -> None:
        """Record this process's losses; gathers from all ranks when torch.distributed is initialised.

        Args:
            local_ts: long timesteps [N].
            local_losses: per-sample losses [N] (e.g. ``training_losses(...)["loss"]``).
        """
        ts, losses = local_ts.detach().reshape(-1), local_losses.detach().reshape(-1).float()
        if dist.is_available() and dist.is_initialized():
            ts, losses = _all_gather_varlen(ts), _all_gather_varlen(losses)
        self.update_with_all_losses(ts.cpu().tolist(), losses.cpu().tolist())

    def update_with_all_losses(self, ts: list[int], losses: list[float]) -> None:
        """Push losses into each timestep's FIFO history (identical on every rank)."""
        for t, loss in zip(ts, losses):
            if self._loss_counts[t] == self.history_per_term:
                self._loss_history[t, :-1] = self._loss_history[t, 1:]
                self._loss_history[t, -1] = loss
            else:
                self._loss_history[t, self._loss_counts[t]] = loss
                self._loss_counts[t] += 1


def _all_gather_varlen(x: torch.Tensor) -> torch.Tensor:
    # Ranks may hold different batch sizes: gather the sizes, pad to the largest, trim after.
    size = torch.tensor([x.numel()], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=x.dtype, device=x.device)
    padded[: x.numel()] = x
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


SCHEDULE_SAMPLERS = {"uniform": UniformSampler, "loss-second-moment": LossSecondMomentResampler}


def create_named_schedule_sampler(name: str, diffusion: GaussianDiffusion) -> ScheduleSampler:
    """Build a timestep sampler by name: ``"uniform"`` or ``"loss-second-moment"``.

    Raises:
        InputError: unknown name (the message lists the valid names).
    """
    if name not in SCHEDULE_SAMPLERS:
        raise unknown_name("schedule sampler", name, SCHEDULE_SAMPLERS)
    return SCHEDULE_SAMPLERS[name](diffusion)
