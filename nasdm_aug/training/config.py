"""Training configs for the NASDM models (Shrivastava & Fletcher 2023, 4.1: AdamW, lr 1e-4 then
2e-5, EMA 0.999; improved DDPM's 1000-step linear hybrid-loss process), with tiny/paper presets."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from nasdm_aug.config import ConfigBase
from nasdm_aug.diffusion.gaussian import LOSS_WEIGHTINGS, LossType, ModelMeanType, ModelVarType
from nasdm_aug.diffusion.respace import create_diffusion
from nasdm_aug.diffusion.schedules import get_named_beta_schedule
from nasdm_aug.diffusion.timestep_samplers import SCHEDULE_SAMPLERS
from nasdm_aug.hardware import PRECISIONS, resolve_precision
from nasdm_aug.nets.presets import UNetConfig, get_preset
from nasdm_aug.types import LAYOUT_CHOICES, MODEL_KINDS
from nasdm_aug.utils import unknown_name

from .schedule import step_decay_lr

__all__ = ["DiffusionSettings", "TrainConfig", "PRECISIONS", "TRAIN_PRESETS", "get_train_preset"]


def _values(enum_cls: type) -> list[str]:
    return [m.value for m in enum_cls]


@dataclass(frozen=True)
class DiffusionSettings(ConfigBase):
    """The diffusion process a model is trained with (arguments of ``create_diffusion``)."""

    steps: int = 1000  # T; the paper's 1000
    schedule: str = "linear"  # beta schedule: "linear" (paper) or "cosine"
    var_type: str = "learned_range"  # improved DDPM's learned interpolation of the variance
    loss_type: str = "hybrid"  # L_simple + vb_weight * L_vlb
    # what the model predicts: "epsilon" (the noise; the paper's), "start_x" (x_0) or "v"
    # (Salimans & Ho 2022); x_0 and v keep the implied x_0 sane at high noise, where an eps error
    # is amplified by 1 / sqrt(SNR)
    mean_type: str = "epsilon"
    vb_weight: float = 0.001  # lambda of the hybrid loss
    # per-timestep weight of the MSE term; "none" is the paper's L_simple. Departures from the
    # paper, for faster convergence: "min-snr" (Hang et al. 2023, min(SNR, snr_gamma) on the x_0
    # loss) and "p2" (Choi et al. 2022, 1 / (p2_k + SNR) ** p2_gamma on the eps loss), each carried
    # to the model's target. The variance's bound term stays unweighted.
    loss_weighting: str = "none"
    snr_gamma: float = 5.0
    p2_gamma: float = 1.0
    p2_k: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"diffusion steps must be >= 1, got {self.steps}")
        get_named_beta_schedule(self.schedule, 2)  # raises on an unknown schedule name
        for name, value, enum_cls in (
            ("var_type", self.var_type, ModelVarType),
            ("loss_type", self.loss_type, LossType),
            ("mean_type", self.mean_type, ModelMeanType),
        ):
            if value not in _values(enum_cls):
                raise unknown_name(f"diffusion {name}", value, _values(enum_cls))
        if not (self.vb_weight >= 0 and math.isfinite(self.vb_weight)):
            raise ValueError(f"vb_weight must be finite and >= 0, got {self.vb_weight}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise unknown_name("diffusion loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS)
        for name in ("snr_gamma", "p2_gamma", "p2_k"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"diffusion {name} must be a finite number > 0, got {value}")

    @property
    def learns_sigma(self) -> bool:
        """True when the model must output 2C channels (eps and the variance part)."""
        return self.var_type in ("learned", "learned_range")

    def build(self):
        """The process (a ``SpacedDiffusion`` keeping all steps)."""
        return create_diffusion(
            steps=self.steps,
            schedule=self.schedule,
            var_type=self.var_type,
            loss_type=self.loss_type,
            mean_type=self.mean_type,
            vb_weight=self.vb_weight,
            loss_weighting=self.loss_weighting,
            snr_gamma=self.snr_gamma,
            p2_gamma=self.p2_gamma,
            p2_k=self.p2_k,
        )


@dataclass(frozen=True)
class TrainConfig(ConfigBase):
    """Everything that defines a NASDM training run; saved as ``config.json`` in the run and
    beside every checkpoint, and the only thing a model is rebuilt from."""

    kind: str  # "mask" (type presence -> mask) or "patch" (mask -> H&E patch)
    model: UNetConfig  # the network (nets.build_model)
    diffusion: DiffusionSettings = field(default_factory=DiffusionSettings)
    # optimisation (paper 4.1)
    batch_size: int = 4  # per rank
    steps: int = 2000  # total optimisation steps
    lr: float = 1e-4  # AdamW learning rate before lr_drop_step
    lr_drop_step: int = 0  # from this step on the rate is lr_after_drop (0: never drop)
    lr_after_drop: float = 2e-5  # the paper's second rate
    warmup_steps: int = 0  # linear warm-up from lr / warmup_steps (0: none)
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    adam_betas: tuple[float, ...] = (0.9, 0.999)
    ema_decay: float = 0.999  # the paper's EMA rate
    ema_warmup: bool = False  # decay min(ema_decay, (1 + step) / (10 + step)): for short runs
    grad_clip: float = 1.0  # max global gradient norm (0: no clipping, the norm is still logged)
    schedule_sampler: str = "uniform"  # timestep sampler: "uniform" or "loss-second-moment"
    flip: bool = True  # random horizontal/vertical flips of x and a spatial condition
    # mask runs only, a departure from the paper: extra MSE weight on the background between nearby
    # nuclei, U-Net's border weight (Ronneberger et al. 2015): 1 + gap_weight * exp(-(d1 + d2)^2 /
    # (2 gap_sigma^2)) with d1, d2 the distances to the two nearest nuclei (0: off, the paper's loss)
    gap_weight: float = 0.0
    gap_sigma: float = 3.0  # pixels
    # a departure from the paper: leave out the training patches holding this many or more dark
    # haematoxylin blobs away from every annotated nucleus (nasdm_aug.data.stain.off_mask_blobs:
    # unannotated nuclei, necrotic debris, tissue dye), which teach a patch model to draw nuclei
    # where its mask has none (0: keep every patch, the paper's data)
    drop_unannotated: int = 0
    # speed
    # bf16 autocast of the network (the diffusion math stays fp32): "fp32", "bf16", or "auto" (bf16
    # only where it is native, an Ampere or later GPU or a CPU with AVX512-BF16 or AMX: emulated bf16
    # is slower than fp32). "auto" is decided when the run starts and kept on resume (trainer_state.pt).
    precision: str = "fp32"
    # memory layout of the network: "auto" (the faster one on this machine for this model and
    # batch, measured once and cached: nasdm_aug.hardware.fastest_layout), "channels_last", "contiguous"
    layout: str = "auto"
    num_workers: int = 0  # DataLoader worker processes per rank
    # bookkeeping
    seed: int = 0  # data order, noise, timesteps, dropout and initial weights
    log_every: int = 50  # steps between log.jsonl records
    ckpt_every: int = 500  # steps between checkpoints (one is always written at the end)
    keep_every: int = 0  # also keep checkpoints at multiples of this step (0: the latest only)
    sample_every: int = 500  # steps between sample grids (0: none)
    sample_count: int = 4  # samples per grid
    sample_steps: int = 20  # sampler steps for the grid (few: it is a progress check)
    sample_sampler: str = ""  # sampler name for grids ("" = the sampling module's default)

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {list(MODEL_KINDS)}, got {self.kind!r}")
        if self.model.kind != self.kind:
            raise ValueError(f"a {self.kind!r} run needs a {self.kind!r} model config, got model.kind={self.model.kind!r}")
        positive = ("batch_size", "steps", "log_every", "ckpt_every", "sample_count", "sample_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        non_negative = ("lr_drop_step", "warmup_steps", "weight_decay", "grad_clip", "num_workers", "keep_every",
                        "sample_every", "seed", "drop_unannotated")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (self.lr > 0 and self.lr_after_drop > 0):
            raise ValueError(f"learning rates must be > 0, got lr={self.lr}, lr_after_drop={self.lr_after_drop}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if self.layout not in LAYOUT_CHOICES:
            raise ValueError(f"layout must be one of {', '.join(LAYOUT_CHOICES)}, got {self.layout!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not (math.isfinite(self.gap_weight) and self.gap_weight >= 0):
            raise ValueError(f"gap_weight must be finite and >= 0, got {self.gap_weight}")
        if not (math.isfinite(self.gap_sigma) and self.gap_sigma > 0):
            raise ValueError(f"gap_sigma must be finite and > 0, got {self.gap_sigma}")
        if self.gap_weight > 0 and self.kind != "mask":
            raise ValueError(f"gap_weight weighs the mask model's loss; a {self.kind!r} run takes 0, "
                             f"got {self.gap_weight}")
        if self.schedule_sampler not in SCHEDULE_SAMPLERS:
            raise unknown_name("schedule_sampler", self.schedule_sampler, SCHEDULE_SAMPLERS)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Build from a dict; a config written before ``layout`` existed (``channels_last``: true or
        false) reads as the layout it trained in, and one written before ``precision`` existed
        (``bf16``: true or false) as the precision it trained in."""
        if isinstance(data, dict) and "channels_last" in data and "layout" not in data:
            data = dict(data)
            data["layout"] = "channels_last" if data.pop("channels_last") else "contiguous"
        if isinstance(data, dict) and "bf16" in data and "precision" not in data:
            data = dict(data)
            data["precision"] = "bf16" if data.pop("bf16") else "fp32"
        return super().from_dict(data)

    def resolved_precision(self, device: torch.device | str, recorded: str | None = None) -> str:
        """``"fp32"`` or ``"bf16"``: ``precision`` as given; for ``"auto"`` the precision the run
        started in (``recorded``), else bf16 where it is native on ``device``
        (:func:`nasdm_aug.hardware.resolve_precision`, as HoVerNet's and synthesis's ``auto``)."""
        return resolve_precision(self.precision, device, recorded)

    def lr_at(self, step: int) -> float:
        """Learning rate of the update made at ``step`` (0-based): warm-up, then lr, then lr_after_drop."""
        return step_decay_lr(step, self.lr, self.lr_after_drop, self.lr_drop_step or None, self.warmup_steps)


# Per-preset training settings; the model comes from nets.get_preset(kind, name). The paper gives
# the optimiser, rates and EMA; steps, batch and the drop step of "paper" are our choice for 128-px
# Lizard on one GPU (it does not state them).
TRAIN_PRESETS: dict[str, dict] = {
    "tiny": dict(
        batch_size=4, steps=2000, lr_drop_step=1500, log_every=25, ckpt_every=250, sample_every=500,
        sample_count=4, sample_steps=20,
        ema_warmup=True,  # a 2,000-step run would otherwise end holding 13% of the initial weights
    ),
    "paper": dict(
        batch_size=16, steps=150_000, lr_drop_step=100_000, warmup_steps=0, precision="auto",
        num_workers=4, log_every=100, ckpt_every=5000, keep_every=50_000, sample_every=5000, sample_count=8,
        sample_steps=50,
    ),
}
# CoNSeP at 20x in 64-px patches on a 2-core CPU, both models trained at once (one thread each)
# within one sitting. Chosen by measurement (benchmarks/RESULTS.md, "Real-tissue recipe"): at
# 128 px the tiny patch model takes 3.7 samples/s against 11.6 at 64 px, too few for a usable
# model in the budget; a 32-channel mask model at lr 3e-4 and batch 8 is what made toy masks
# decode to nuclei (16 channels did not); fp32 (the patch model: bf16 where native, below)
# because bf16 is slower where the CPU has no native bf16; the rates drop 5x near the end (the
# paper's two rates, 1e-4 then 2e-5).
_CONSEP_CPU = dict(
    batch_size=8, ema_warmup=True, log_every=25, ckpt_every=250, sample_every=1000,
    sample_count=4, sample_steps=20,
)
TRAIN_PRESETS["consep-cpu"] = _CONSEP_CPU
_PER_KIND: dict[str, dict[str, dict]] = {
    "consep-cpu": {
        # about 70 minutes of one core (benchmarks/RESULTS.md, "Mask-model ablation"); the rate
        # drops at 2,450 because the run was ablated at 2,800 steps and then resumed to 5,000.
        # U-Net's border weight at w0 0.5 (not in the NASDM paper) asks for background between
        # neighbouring nuclei: over four request seeds the share of foreground regions holding
        # three or more nuclei fell from 0.166 to 0.123 (real masks 0.113) and the count distance
        # from 2.28 to 2.10, and its bank of generated masks trained the balance study's HoVerNet
        # as well; w0 1 and 2 overshot and lost nuclei ("A loss that asks for gaps")
        "mask": dict(steps=5000, lr=3e-4, lr_drop_step=2450, lr_after_drop=6e-5, gap_weight=0.5, gap_sigma=3.0),
        # 57 minutes of one core, rate drop at 90% (benchmarks/RESULTS.md, "Patch-model ablation",
        # three times the budget): sampled at DDPM 50 with guidance 1.5, its S1 trained a HoVerNet
        # to 0.96 of real R1's Dice, against 0.81 for the ablation's 846-step run unguided
        "patch": dict(steps=2400, lr=2e-4, lr_drop_step=2160, lr_after_drop=4e-5,
                      # bf16 only where native: the same 2,400 steps in 36.5 instead of 60 min on a
                      # Zen 4 with AVX512-BF16, and as good (benchmarks/RESULTS.md, "Training
                      # precision and layout of the recipe"); fp32 elsewhere, where bf16 is slower
                      precision="auto",
                      # 10% of CoNSeP's Train patches hold 3+ dark blobs off their annotation
                      # (unannotated nuclei, necrotic debris, tissue dye); trained without them, two
                      # runs drew 0.2-0.3 such blobs a patch instead of 1.5-3.5 and their S1 trained a
                      # HoVerNet to 0.99 of real R1's Dice, where four runs on all patches reached
                      # 0.90-0.99 (benchmarks/RESULTS.md, "Unannotated tissue in the patch model's
                      # training data")
                      drop_unannotated=3),
    },
}
# Departures from the paper in the consep-cpu patch recipe, chosen by the same-budget ablation: an
# eps-predicting model's x_0 at high noise is saturated colour noise until trained far longer than
# a CPU allows (an eps error is amplified by 1 / sqrt(SNR) there), and sampling keeps those blotches;
# predicting x_0 with Min-SNR-5 weighting drew smooth tissue with nuclei on their masks in a third
# of the old recipe's steps. The mask at the input came with the pair it was ablated in.
# The mask model takes the same pair: at an equal budget, the eps model's masks merged whole
# epithelial regions (area distance to real nuclei 88 px) and drew types not asked for (precision
# 0.82); predicting x_0 with Min-SNR-5 gave nuclei of real sizes (area distance 5-6 px, at the
# sampling floor) and precision 0.95.
# The patch model also takes improved DDPM's cosine schedule: Min-SNR weighs the x_0 loss by
# min(SNR, 5), and under the linear schedule half the timesteps drawn have an SNR below 0.09, so
# half of every batch barely trains; under the cosine schedule a fifth do. At the same 2,400 steps
# it cut FID from 1.33x to 1.18x and KID from 2.05x to 1.65x the real baseline (benchmarks/RESULTS.md,
# "The cosine schedule"). The mask model keeps the linear schedule: retrained with the cosine
# one (in bf16) its masks were worse on every measure ("The cosine schedule for the mask model").
_PER_KIND_DIFFUSION: dict[str, dict[str, dict]] = {
    "consep-cpu": {"patch": dict(mean_type="start_x", loss_weighting="min-snr", schedule="cosine"),
                   "mask": dict(mean_type="start_x", loss_weighting="min-snr")},
}
_PER_KIND_MODEL: dict[str, dict[str, dict]] = {
    "consep-cpu": {"patch": dict(input_condition="mask")},
}
# the network preset each training preset builds on
_NET_PRESET = {"tiny": "tiny", "paper": "paper", "consep-cpu": "tiny"}


def get_train_preset(kind: str, name: str, **model_overrides: Any) -> TrainConfig:
    """The TrainConfig preset ``name`` (``"tiny"``, ``"paper"`` or ``"consep-cpu"``) for model ``kind``.

    Args:
        kind: ``"mask"`` or ``"patch"``.
        name: preset name.
        **model_overrides: UNetConfig fields that follow the data (``n_types``, ``image_size``).

    Raises:
        InputError: unknown preset name (the message lists the valid names).
    """
    if name not in TRAIN_PRESETS:
        raise unknown_name("training preset", name, TRAIN_PRESETS)
    fields = {**TRAIN_PRESETS[name], **_PER_KIND.get(name, {}).get(kind, {})}
    diffusion = DiffusionSettings(**_PER_KIND_DIFFUSION.get(name, {}).get(kind, {}))
    model_fields = {**_PER_KIND_MODEL.get(name, {}).get(kind, {}), **model_overrides}
    return TrainConfig(kind=kind, model=get_preset(kind, _NET_PRESET[name], **model_fields), diffusion=diffusion,
                       **fields)
