"""Frozen configs of the bundled HoVerNet and its presets: ``paper`` is HoVerNet's recipe as the
NASDM paper runs it (Sec. 4.3.2), ``tiny`` trains on a 2-core CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from nasdm_aug.config import ConfigBase
from nasdm_aug.types import LAYOUT_CHOICES, PRECISIONS
from nasdm_aug.utils import InputError, unknown_name

__all__ = ["check_encoder_weights", "ModelConfig", "LossConfig", "PostprocessConfig", "POSTPROCESS_PRESETS",
           "HoVerNetConfig", "HOVERNET_PRESETS", "get_hovernet_preset"]


def check_encoder_weights(weights: str | os.PathLike | None) -> None:
    """Refuse ``encoder_weights="imagenet"``: segmentation_models_pytorch would download them at
    run time, and nasdm-aug downloads nothing; a local copy of the same weights works.

    Raises:
        InputError: ``weights`` is ``"imagenet"``.
    """
    if str(weights) == "imagenet":
        raise InputError("`encoder_weights` imagenet would download the ImageNet weights at run time, which "
                         "nasdm-aug never does: pass `encoder_weights` FILE, a local copy of them (safetensors or "
                         "a torch state dict of the encoder)")


@dataclass(frozen=True)
class ModelConfig(ConfigBase):
    """The network: an smp encoder and HoVerNet's three decoders."""

    encoder: str = "resnet50"  # any smp encoder name (smp.encoders.encoders)
    # None (random) | path to a local weights file. "imagenet" is refused when a model is built
    # (check_encoder_weights): nothing downloads at run time; pass a local copy of those weights
    encoder_weights: str | None = None
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)  # per decoder stage, deepest first (5 stages)
    dense_units: int = 2  # dense units per decoder stage (HoVerNet's decoders use dense blocks)
    growth: int = 32  # channels each dense unit adds
    n_types: int = 6  # nuclei types (nc has n_types + 1 channels with background)

    def __post_init__(self) -> None:
        if len(self.decoder_channels) != 5 or min(self.decoder_channels) < 1:
            raise ValueError(f"decoder_channels must be 5 positive ints, got {self.decoder_channels}")
        if self.dense_units < 0 or self.growth < 1:
            raise ValueError(f"dense_units >= 0 and growth >= 1 required, got {self.dense_units}, {self.growth}")
        if self.n_types < 1:
            raise ValueError(f"n_types must be >= 1, got {self.n_types}")


@dataclass(frozen=True)
class LossConfig(ConfigBase):
    """Weights of HoVerNet's loss terms (defaults: MONAI's HoVerNetLoss, i.e. HoVerNet's)."""

    np_ce: float = 1.0  # np cross-entropy
    np_dice: float = 1.0  # np Dice
    hv_mse: float = 2.0  # hv MSE
    hv_mse_grad: float = 1.0  # MSE of the hv Sobel gradients inside nuclei
    nc_ce: float = 1.0  # nc cross-entropy
    nc_dice: float = 1.0  # nc Dice

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.to_dict().items() if v < 0}
        if bad:
            raise ValueError(f"loss weights must be >= 0, got {bad}")


@dataclass(frozen=True)
class PostprocessConfig(ConfigBase):
    """Marker-controlled watershed of HoVerNet; defaults are MONAI's HoVerNetInstanceMapPostProcessing
    except ``marker_radius`` and ``fill_unmarked``. Named settings: :meth:`monai` (MONAI's exactly)
    and :meth:`hovernet` (hover_net's ``process()``); ``POSTPROCESS_PRESETS`` lists them."""

    np_threshold: float = 0.5  # foreground when P(nucleus) >= threshold
    min_object_size: int = 10  # remove foreground blobs and markers smaller than this (pixels)
    sobel_kernel_size: int = 5  # Sobel kernel on hv (HoVerNet used 21 at 40x on 1000-px tiles)
    smooth_sigma: float = 1.0  # Gaussian smoothing of the distance (energy) map
    # 0: scipy's gaussian_filter (truncated at 4 sigma, zero outside); an odd k: OpenCV's
    # GaussianBlur((k, k), smooth_sigma) (reflect-101 border; sigma 0 means OpenCV's own kernel)
    smooth_size: int = 0
    marker_threshold: float = 0.4  # energy >= threshold is "uncertain" and removed from markers
    marker_radius: int = 1  # radius of the marker opening (MONAI: 2, for 40x; 1 keeps small 20x nuclei)
    # "disk": scikit-image's disk; "ellipse": OpenCV's MORPH_ELLIPSE of size 2r+1, the image
    # border ignored as cv2.morphologyEx does
    marker_shape: str = "disk"
    connectivity: int = 1  # watershed connectivity
    fill_unmarked: bool = True  # a blob with no marker becomes one nucleus (HoVerNet/MONAI drop it)
    # "types": majority of each pixel's most likely non-background type (every nucleus gets a type);
    # "argmax": majority of the full argmax, the runner-up when background wins (hover_net)
    type_vote: str = "types"

    def __post_init__(self) -> None:
        if not 0.0 < self.np_threshold < 1.0 or not 0.0 < self.marker_threshold < 1.0:
            raise ValueError(f"thresholds must be in (0, 1), got {self.np_threshold}, {self.marker_threshold}")
        if self.sobel_kernel_size < 3 or self.sobel_kernel_size % 2 == 0:
            raise ValueError(f"sobel_kernel_size must be odd and >= 3, got {self.sobel_kernel_size}")
        if self.min_object_size < 0 or self.marker_radius < 0 or self.smooth_sigma < 0:
            raise ValueError("min_object_size, marker_radius and smooth_sigma must be >= 0")
        if self.smooth_size < 0 or (self.smooth_size and self.smooth_size % 2 == 0):
            raise ValueError(f"smooth_size must be 0 or odd, got {self.smooth_size}")
        if self.connectivity not in (1, 2):
            raise ValueError(f"connectivity must be 1 or 2, got {self.connectivity}")
        if self.marker_shape not in ("disk", "ellipse"):
            raise ValueError(f"marker_shape must be 'disk' or 'ellipse', got {self.marker_shape!r}")
        if self.type_vote not in ("types", "argmax"):
            raise ValueError(f"type_vote must be 'types' or 'argmax', got {self.type_vote!r}")

    @classmethod
    def monai(cls) -> "PostprocessConfig":
        """The settings of MONAI's HoVerNetInstanceMapPostProcessing defaults (for comparisons)."""
        return cls(marker_radius=2, fill_unmarked=False)

    @classmethod
    def hovernet(cls) -> "PostprocessConfig":
        """hover_net's ``process()`` (``__proc_np_hv`` and the type vote): Sobel 21, OpenCV's
        3x3 Gaussian, a 5x5 elliptical opening, unmarked blobs dropped, the argmax vote."""
        return cls(sobel_kernel_size=21, smooth_sigma=0.0, smooth_size=3, marker_radius=2, marker_shape="ellipse",
                   fill_unmarked=False, type_vote="argmax")

    @classmethod
    def preset(cls, name: str) -> "PostprocessConfig":
        """One of ``POSTPROCESS_PRESETS`` by name.

        Raises:
            InputError: unknown name (the message lists the presets).
        """
        if name not in POSTPROCESS_PRESETS:
            raise unknown_name("post-processing preset", name, sorted(POSTPROCESS_PRESETS))
        return getattr(cls, POSTPROCESS_PRESETS[name])() if POSTPROCESS_PRESETS[name] else cls()


# name -> PostprocessConfig constructor ("" = the defaults)
POSTPROCESS_PRESETS = {"default": "", "monai": "monai", "hovernet": "hovernet"}


@dataclass(frozen=True)
class HoVerNetConfig(ConfigBase):
    """The training recipe; every number of Sec. 4.3.2 of the NASDM paper lives here."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    phase1_epochs: int = 50  # decoders only, encoder frozen
    phase2_epochs: int = 50  # all layers
    lr: float = 1e-4  # Adam learning rate at the start of each phase
    lr_decayed: float = 1e-5  # ... and after lr_decay_epoch epochs of each phase
    lr_decay_epoch: int = 25
    weight_decay: float = 0.0
    batch_size: int = 16
    val_every: int = 2  # validate every k epochs (and after the last); best by val Dice
    augment: bool = True  # flips, 90-degree rotations, colour jitter
    # H&E stain jitter on top (hovernet.data.RandHEDJitterd, half the items): each stain's optical
    # density s becomes a * s + b, a ~ U(1 - hed_scale, 1 + hed_scale), b ~ U(-hed_shift, hed_shift).
    # 0, 0: none, hover_net's own recipe. Not in the paper; it keeps a HoVerNet trained on synthetic
    # patches from learning the generator's stain balance (benchmarks/RESULTS.md)
    hed_scale: float = 0.0
    hed_shift: float = 0.0
    # DataLoader workers; None: none on a CPU, on CUDA min(8, CPUs per rank on the machine)
    # (hovernet.trainer.resolve_workers). Older runs recorded 0 and may change it on resume
    num_workers: int | None = None
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" ...
    # bf16 autocast of the network (the losses stay fp32); it pays only where bf16 is native (Ampere+ GPU,
    # AVX512-BF16/AMX). "auto": bf16 there, fp32 elsewhere, decided when a run starts and recorded
    # in its config.json, so a resumed run keeps the precision it started in
    precision: str = "fp32"  # one of nasdm_aug.types.PRECISIONS
    # memory layout of the network in training: "auto" (the faster one here, measured once per
    # machine and model: nasdm_aug.hardware.fastest_layout), "channels_last" or "contiguous"
    layout: str = "auto"

    def __post_init__(self) -> None:
        if self.phase1_epochs < 0 or self.phase2_epochs < 0 or self.phase1_epochs + self.phase2_epochs < 1:
            raise ValueError(f"need >= 1 epoch in total, got {self.phase1_epochs} + {self.phase2_epochs}")
        if self.lr <= 0 or self.lr_decayed <= 0 or self.lr_decay_epoch < 0:
            raise ValueError(f"lr, lr_decayed > 0 and lr_decay_epoch >= 0 required, got {self.lr}, {self.lr_decayed}, "
                             f"{self.lr_decay_epoch}")
        if self.batch_size < 1 or self.val_every < 1 or (self.num_workers is not None and self.num_workers < 0):
            raise ValueError(f"batch_size, val_every >= 1 and num_workers >= 0 required, got {self.batch_size}, "
                             f"{self.val_every}, {self.num_workers}")
        if not 0.0 <= self.hed_scale < 1.0 or self.hed_shift < 0.0:
            raise ValueError(f"hed_scale must lie in [0, 1) and hed_shift be >= 0, got {self.hed_scale}, {self.hed_shift}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.layout not in LAYOUT_CHOICES:
            raise ValueError(f"layout must be one of {', '.join(LAYOUT_CHOICES)}, got {self.layout!r}")

    @classmethod
    def from_options(cls, preset: str = "tiny", config: str | os.PathLike | None = None, *, epochs: int | None = None,
                     encoder_weights: str | None = None, workers: int | None = None,
                     **fields: Any) -> "HoVerNetConfig":
        """The config ``nasdm-aug hovernet train`` runs: ``config`` (a JSON file), else the
        ``preset``, with the options given (not None) in its place. ``epochs`` sets both phases
        to N epochs, the rate decaying after half of each (the paper's 25 of 50);
        ``encoder_weights`` is a local file or ``"none"``; ``workers`` is ``num_workers``;
        ``**fields`` are other fields of the config (``batch_size``, ``seed``, ``device``,
        ``layout``, ``precision``).

        Raises:
            InputError: an unknown preset, a config file or value the config rejects, or
                ``encoder_weights`` ``"imagenet"`` (:func:`check_encoder_weights`).
        """
        cfg = cls.load(config) if config else get_hovernet_preset(preset)
        changes = {k: v for k, v in {**fields, "num_workers": workers}.items() if v is not None}
        if epochs is not None:
            changes.update(phase1_epochs=epochs, phase2_epochs=epochs, lr_decay_epoch=max(1, epochs // 2))
        if encoder_weights is not None:
            check_encoder_weights(encoder_weights)
            changes["model"] = cfg.model.replace(encoder_weights=None if encoder_weights == "none" else encoder_weights)
        try:
            return cfg.replace(**changes)
        except (TypeError, ValueError) as exc:
            raise InputError(str(exc)) from None

    @property
    def epochs(self) -> int:
        """Total epochs over both phases."""
        return self.phase1_epochs + self.phase2_epochs


# Both presets train in precision "auto": bf16 where it is native. On CoNSeP, five seeds of the
# tiny preset trained each way moved Dice, PQ and mPQ+ by at most 0.4 standard deviations of the
# seed-to-seed spread (benchmarks/RESULTS.md, "HoVerNet in bf16: Dice and PQ").
HOVERNET_PRESETS: dict[str, HoVerNetConfig] = {
    "paper": HoVerNetConfig(precision="auto"),
    # CPU: resnet18 and thin decoders without dense units (full-resolution decoder work dominates
    # a CPU step); lr 1e-3 because only a few epochs fit a CPU
    "tiny": HoVerNetConfig(
        model=ModelConfig(encoder="resnet18", decoder_channels=(32, 24, 16, 16, 8), dense_units=0, growth=8),
        phase1_epochs=2, phase2_epochs=4, lr=1e-3, lr_decayed=1e-4, lr_decay_epoch=2, batch_size=8, val_every=2,
        precision="auto",
    ),
}


def get_hovernet_preset(name: str) -> HoVerNetConfig:
    """Return a named preset.

    Raises:
        InputError: unknown name; the message lists the presets.
    """
    if name not in HOVERNET_PRESETS:
        raise unknown_name("HoVerNet preset", name, sorted(HOVERNET_PRESETS))
    return HOVERNET_PRESETS[name]
