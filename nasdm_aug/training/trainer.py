"""The NASDM trainer (Shrivastava & Fletcher 2023, 4.1; after improved-diffusion's train_util.py):
AdamW with a step learning-rate drop, EMA, clipping, bf16, the faster memory layout, DDP, exact resume.
The loss statistics it logs are kept by ``loss_stats.py``."""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from nasdm_aug.diffusion.gaussian import GaussianDiffusion
from nasdm_aug.diffusion.timestep_samplers import ScheduleSampler, create_named_schedule_sampler
from nasdm_aug.hardware import LAYOUTS, measured_layout, memory_format, optimizer_step
from nasdm_aug.utils import InputError

from .checkpoint import latest_checkpoint, load_optimizer_state, load_trainer_state, load_weights, save_checkpoint
from .config import TrainConfig
from .data import StepIndexSampler, random_flip, step_seed
from .distributed import DistInfo, any_rank, barrier, collective_errors, rank0_choice
from .ema import EMA
from .loss_stats import TERMS, _LossStats
from .metric_log import MetricLogger

__all__ = ["Trainer", "NonFiniteLossError", "TERMS", "timing_step"]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or inf loss or gradient; the message names the step and the last good checkpoint."""


def timing_step(model: nn.Module, diffusion: GaussianDiffusion, x: torch.Tensor, cond: torch.Tensor,
                fmt: torch.memory_format = torch.contiguous_format, bf16: bool = False,
                lr: float = 1e-4) -> Callable[[], None]:
    """One full training step of ``model`` (the hybrid loss, backward, fused AdamW) on the batch
    ``x``, ``cond`` in layout ``fmt``, for timing; fixed timesteps and noise. The model is trained
    as it is: pass a copy."""
    dev = x.device
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=dev.type in ("cpu", "cuda"))
    gen = torch.Generator().manual_seed(0)
    x = x.contiguous(memory_format=fmt)
    c = cond.contiguous(memory_format=fmt) if cond.dim() == 4 else cond
    t = torch.randint(0, diffusion.num_timesteps, (x.shape[0],), generator=gen).to(dev)
    noise = torch.randn(x.shape, generator=gen).to(dev)

    def model_fn(xt: torch.Tensor, ts: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            return model(xt.contiguous(memory_format=fmt), ts, **kwargs).float()

    return optimizer_step(
        lambda: diffusion.training_losses(model_fn, x, t, model_kwargs={"cond": c}, noise=noise)["loss"].mean(), opt)


class Trainer:
    """Trains one NASDM model; it builds nothing and receives the model, diffusion and data.

    Randomness at step s on rank r (timesteps, noise, flips, the model's condition dropout) is
    seeded by ``step_seed(config.seed, s, r)``, and the batch is ``batch_indices(s, ...)``, so a
    run resumed from a checkpoint reaches the same weights as an uninterrupted one.

    Args:
        model: the network, ``forward(x [N, C, H, W], t [N], cond) -> [N, 2C, H, W]``; moved to
            ``dist.device`` here.
        diffusion: the process whose ``training_losses`` gives the per-sample terms.
        dataset: items ``{"x": [C, H, W], "cond": ...}`` (e.g. :class:`NASDMDataset`).
        config: the run's TrainConfig (its optimisation fields are used; all of it is saved).
        out_dir: the run directory.
        data_info: JSON-able description of the data, saved beside every checkpoint.
        preview: ``preview(model, step) -> None`` called on rank 0 every ``sample_every`` steps with the EMA model.
        dist: this process's place in the job (single process on CPU when None).
        progress: show a tqdm bar (rank 0).
        layout: the memory layout a resumed run was trained in (its ``trainer_state.pt``), used
            when ``config.layout`` is ``"auto"``; None measures the faster layout
            (:meth:`measure_layout`).

    ``config.precision`` ``"auto"`` becomes ``"bf16"`` where bf16 is native on the device and
    ``"fp32"`` elsewhere (:meth:`TrainConfig.resolved_precision`); the answer is saved in
    ``trainer_state.pt``, and :meth:`load` keeps it, so a resumed run trains on in its precision.
    """

    def __init__(
        self,
        model: nn.Module,
        diffusion: GaussianDiffusion,
        dataset: Dataset,
        config: TrainConfig,
        out_dir: str | os.PathLike,
        *,
        data_info: dict[str, Any] | None = None,
        preview: Callable[[nn.Module, int], None] | None = None,
        dist: DistInfo | None = None,
        progress: bool = True,
        layout: str | None = None,
    ) -> None:
        self.config, self.diffusion, self.dataset = config, diffusion, dataset
        self.out_dir = Path(out_dir)
        #: called after each checkpoint is written (rank 0), e.g. to drop the run this one replaces
        self.after_checkpoint: Callable[[], None] | None = None
        self.dist = dist or DistInfo()
        self.device = self.dist.device
        self.data_info = data_info or {}
        self.preview, self.progress = preview, progress
        self.model = model.to(self.device)
        #: "fp32" or "bf16": the precision the network trains in (autocast; the diffusion math stays fp32)
        self.precision: str = config.resolved_precision(self.device)
        if config.layout != "auto":
            layout = config.layout
        elif layout not in LAYOUTS:  # one layout per job: rank 0 measures, every rank uses its answer
            layout = rank0_choice(self.measure_layout, LAYOUTS, self.dist)
        #: the memory layout the network trains in ("channels_last" or "contiguous")
        self.layout: str = layout
        self._fmt = memory_format(layout)
        self.model = self.model.to(memory_format=self._fmt)
        self.ema = EMA(self.model, config.ema_decay, warmup=config.ema_warmup)
        self.ddp = (
            DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.dist.enabled
            else self.model
        )
        # fused: one kernel over all parameters (3x faster than the default loop on the 2-core CPU
        # for the tiny patch model, benchmarks/RESULTS.md); PyTorch has it for CPU and CUDA.
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, betas=tuple(config.adam_betas), weight_decay=config.weight_decay,
            fused=self.device.type in ("cpu", "cuda"),
        )
        self.schedule_sampler: ScheduleSampler = create_named_schedule_sampler(config.schedule_sampler, diffusion)
        self.step = 0
        self.logger: MetricLogger | None = None

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Trainer state for ``trainer_state.pt``: tensors and plain containers only."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":  # this rank's own GPU: a resume may see fewer GPUs, or none
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": 1,
            "step": self.step,
            "world_size": self.dist.world_size,
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
            "schedule_sampler": self.schedule_sampler.state_dict(),
            "layout": self.layout,
            "precision": self.precision,
        }

    def load(self, ckpt_dir: str | os.PathLike) -> None:
        """Restore weights, EMA, optimizer, step, precision and RNG states from a checkpoint directory.

        A CUDA RNG state that does not fit this machine (saved on a GPU and resumed on the CPU, or
        a checkpoint from before one state was saved per run, with one per visible GPU) is restored
        as far as it fits, and one warning says what was not. Training is unaffected: every step
        reseeds the global and CUDA generators (:meth:`train_step`).
        """
        self.model.load_state_dict(load_weights(ckpt_dir, ema=False, device=self.device))
        self.ema.load_state_dict(load_weights(ckpt_dir, ema=True, device=self.device))
        state = load_trainer_state(ckpt_dir)
        if int(state.get("world_size", 1)) != self.dist.world_size:
            # each rank's batch depends on the world size: training continues, but not bit-exactly
            warnings.warn(
                f"{ckpt_dir}: saved with {state.get('world_size')} ranks, resumed with {self.dist.world_size}; "
                "the data order after the resume differs from an uninterrupted run",
                stacklevel=2,
            )
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.step = int(state["step"])
        self.precision = self.config.resolved_precision(self.device, state.get("precision"))
        torch.set_rng_state(state["rng"]["torch"])
        not_restored = _restore_cuda_rng(state["rng"].get("cuda"), self.device)
        if not_restored and self.dist.is_main:  # one line for the job, not one per rank
            warnings.warn(f"{ckpt_dir}: {not_restored}; training is unaffected: every step reseeds its generators",
                          stacklevel=2)
        if "schedule_sampler" in state:  # absent from checkpoints written before it was saved
            try:
                self.schedule_sampler.load_state_dict(state["schedule_sampler"])
            except ValueError as exc:
                raise InputError(f"{Path(ckpt_dir) / 'trainer_state.pt'}: {exc}") from None

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 only; other ranks return None)."""
        if not self.dist.is_main:
            return None
        path = save_checkpoint(
            self.out_dir,
            self.step,
            model_state=self.model.state_dict(),
            ema_state=self.ema.state_dict(),
            trainer_state=self.state_dict(),
            config=self.config,
            data_info=self.data_info,
            keep_every=self.config.keep_every,
        )
        if self.after_checkpoint is not None:
            self.after_checkpoint()
        return path

    def measure_layout(self) -> str:
        """The faster memory layout for this model, batch and machine (:func:`nasdm_aug.hardware.measured_layout`:
        measured once on this trainer's device, one layout at a time, then cached; channels_last
        where a layout runs out of memory).

        It times :func:`timing_step` on a copy of the model and one batch of the dataset, under a
        forked RNG, so the run itself is unchanged.
        """
        cfg, dev = self.config, self.device
        batch = default_collate([self.dataset[i % len(self.dataset)] for i in range(cfg.batch_size)])
        x0, cond = batch["x"].to(dev), batch["cond"].to(dev)

        bf16 = self.precision == "bf16"

        def make_step(fmt: torch.memory_format) -> Callable[[], None]:
            # called once per layout, each copy dropped before the next is made (fastest_layout)
            return timing_step(copy.deepcopy(self.model), self.diffusion, x0, cond, fmt, bf16=bf16, lr=cfg.lr)

        key = (f"nasdm {cfg.kind} {cfg.model.to_json(indent=None)} batch={x0.shape[0]} x={tuple(x0.shape[1:])} "
               f"bf16={bf16} diffusion={cfg.diffusion.to_json(indent=None)}")
        return measured_layout(key, make_step, dev)

    # -- one step --------------------------------------------------------------------------
    def _model_fn(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        # Autocast only the network: the diffusion math (KL, log-likelihoods) stays in fp32.
        x = x.contiguous(memory_format=self._fmt)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.ddp(x, t, **kwargs)
        return out.float()

    def train_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """One optimisation step at ``self.step`` on this rank's batch.

        Returns:
            (t [N], per-sample losses dict ``loss``/``mse``/``vb`` [N], grad norm scalar).

        Raises:
            NonFiniteLossError: the loss or gradient norm is NaN/inf on any rank (weights untouched).
        """
        cfg, dev = self.config, self.device
        seed = step_seed(cfg.seed, self.step, self.dist.rank)
        torch.manual_seed(seed)  # the model's own condition dropout draws from the global RNG
        gen = torch.Generator().manual_seed(seed)
        batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        if cfg.flip:
            batch = random_flip(batch, gen)
        x = batch["x"]
        t, weights = self.schedule_sampler.sample(x.shape[0], dev, generator=gen)
        noise = torch.randn(x.shape, generator=gen).to(dev, non_blocking=True)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr_at(self.step)
        losses = self.diffusion.training_losses(self._model_fn, x, t, model_kwargs={"cond": batch["cond"]}, noise=noise,
                                                pixel_weight=batch.get("weight"))
        if hasattr(self.schedule_sampler, "update_with_local_losses"):
            self.schedule_sampler.update_with_local_losses(t, losses["loss"].detach())
        loss = (losses["loss"] * weights).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        vals = torch.stack([loss.detach().float(), grad_norm.float()])
        if any_rank(not bool(torch.isfinite(vals).all()), dev):
            self._raise_nonfinite(losses, grad_norm)
        self.optimizer.step()
        self.ema.update(self.step)
        self.step += 1
        return t, losses, grad_norm

    def _raise_nonfinite(self, losses: dict[str, torch.Tensor], grad_norm: torch.Tensor) -> None:
        latest = latest_checkpoint(self.out_dir)
        terms = ", ".join(f"{k}={v.detach().float().mean().item():.4g}" for k, v in losses.items())
        raise NonFiniteLossError(
            f"step {self.step}: non-finite training loss or gradient ({terms}, grad_norm={grad_norm.item():.4g}); "
            f"stopped before updating the weights; last good checkpoint: {latest or 'none yet'}"
        )

    # -- the loop --------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        cfg = self.config
        sampler = StepIndexSampler(
            len(self.dataset), cfg.batch_size, cfg.seed, self.step, cfg.steps, self.dist.rank, self.dist.world_size
        )
        return DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=cfg.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def run(self) -> dict[str, float]:
        """Train from ``self.step`` to ``config.steps``, logging, sampling and checkpointing.

        Returns:
            The last logged summary (empty when no step ran).
        """
        cfg, main = self.config, self.dist.is_main
        if main:
            self.logger = MetricLogger(self.out_dir, resume_step=self.step)
        self.model.train()
        stats, last = _LossStats(self.diffusion.num_timesteps, self.device), {}
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", disable=not (self.progress and main))
        t0, step0 = time.perf_counter(), self.step
        try:
            for batch in self._loader():
                t, losses, grad_norm = self.train_step(batch)
                stats.add(t, losses, grad_norm)
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    last = self._log(stats, bar, time.perf_counter() - t0, self.step - step0)
                    stats, t0, step0 = _LossStats(self.diffusion.num_timesteps, self.device), time.perf_counter(), self.step
                save = self.step % cfg.ckpt_every == 0 or self.step == cfg.steps
                show = self.preview is not None and cfg.sample_every > 0 and self.step % cfg.sample_every == 0
                if save or show:
                    # rank 0 writes alone: a full disk or a failing preview must stop every rank
                    # with its message, not leave the others waiting in the next collective
                    with collective_errors():
                        if save:
                            self.save()
                        if main and show:
                            self.preview(self.ema.module, self.step)
        finally:
            bar.close()
            if self.logger is not None:
                self.logger.close()
        barrier()
        return last

    def _log(self, stats: _LossStats, bar: tqdm, seconds: float, steps: int) -> dict[str, float]:
        record = stats.summary()  # a collective: every rank calls it
        if not self.dist.is_main:
            return record
        rate = steps / max(seconds, 1e-9)
        world_batch = self.config.batch_size * self.dist.world_size
        record.update(
            step=self.step,
            epoch=self.step * world_batch / len(self.dataset),
            lr=self.config.lr_at(self.step - 1),
            it_per_s=rate,
            samples_per_s=rate * world_batch,
        )
        bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
        assert self.logger is not None
        self.logger.write(record)
        return record


def _restore_cuda_rng(saved: torch.Tensor | list[torch.Tensor] | None, device: torch.device) -> str | None:
    """Put a checkpoint's CUDA RNG state back on ``device`` where it fits; returns what could not be
    restored exactly (None when all was). ``saved`` is the saving rank's own GPU state, or, in
    checkpoints written before that, a list with the state of every GPU the saving process saw."""
    if saved is None:
        return None
    states = [saved] if isinstance(saved, torch.Tensor) else list(saved)
    if not states:
        return None
    if device.type != "cuda":
        return f"{len(states)} saved CUDA RNG state(s) not restored (resumed on {device.type})"
    if isinstance(saved, torch.Tensor):
        torch.cuda.set_rng_state(saved, device)
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= len(states):
        return f"none of the {len(states)} saved per-GPU CUDA RNG states is for cuda:{index}; not restored"
    torch.cuda.set_rng_state(states[index], device)
    if len(states) == 1:
        return None
    return (f"restored the CUDA RNG state of cuda:{index} only, of {len(states)} saved per-GPU states "
            f"({torch.cuda.device_count()} GPU(s) visible now)")
