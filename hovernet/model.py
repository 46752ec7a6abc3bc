"""HoVerNet (Graham et al., 2019) on any smp encoder: one encoder, three dense-block decoders
(np, hv, nc) whose outputs match the input size (e.g. the NASDM paper's 128-px patches).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hovernet.config import ModelConfig, check_encoder_weights
from nasdm_aug.utils import InputError, unknown_name

__all__ = ["HoVerNet", "load_encoder_weights"]

# ImageNet statistics: inputs arrive in [0, 1] and the encoder sees them standardised, which
# is what "imagenet" weights expect and is harmless from scratch.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def _conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _DenseUnit(nn.Module):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3 whose output is concatenated to its input (HoVerNet Fig. 2)."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, 2 * growth, 1, bias=False),
            nn.BatchNorm2d(2 * growth), nn.ReLU(inplace=True), nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class _DecoderStage(nn.Module):
    """Upsample x2, concatenate the skip, conv, dense units, 1x1 transition back to ``cout``."""

    def __init__(self, cin: int, cskip: int, cout: int, dense_units: int, growth: int) -> None:
        super().__init__()
        self.conv = _conv_bn_relu(cin + cskip, cout)
        units, c = [], cout
        for _ in range(dense_units):
            units.append(_DenseUnit(c, growth))
            c += growth
        self.dense = nn.Sequential(*units)
        self.transition = _conv_bn_relu(c, cout, k=1) if dense_units else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.transition(self.dense(self.conv(x)))


class _Decoder(nn.Module):
    """One branch: five stages from stride 32 to stride 1, then a 1x1 head."""

    def __init__(self, enc_channels: tuple[int, ...], cfg: ModelConfig, n_out: int) -> None:
        super().__init__()
        skips = list(enc_channels[1:-1])[::-1] + [0]  # strides 16, 8, 4, 2; none at full size
        cins = [enc_channels[-1], *cfg.decoder_channels[:-1]]
        self.stages = nn.ModuleList(
            _DecoderStage(ci, cs, co, cfg.dense_units, cfg.growth)
            for ci, cs, co in zip(cins, skips, cfg.decoder_channels)
        )
        self.head = nn.Conv2d(cfg.decoder_channels[-1], n_out, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        skips = feats[1:-1][::-1] + [None]
        x = feats[-1]
        for stage, skip in zip(self.stages, skips):
            x = stage(x, skip)
        return self.head(x)


class HoVerNet(nn.Module):
    """HoVerNet with an smp encoder.

    Args:
        cfg: the model config (encoder name and weights, decoder sizes, number of types).

    Inputs are images [N, 3, H, W] in [0, 1] with H and W multiples of 32; outputs are a dict
    of logits ``np`` [N, 2, H, W], regressions ``hv`` [N, 2, H, W] (horizontal, vertical) and
    logits ``nc`` [N, n_types + 1, H, W].
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.cfg = cfg
        try:
            self.encoder = smp.encoders.get_encoder(cfg.encoder, in_channels=3, depth=5, weights=None)
        except KeyError:
            raise unknown_name("smp encoder", cfg.encoder, sorted(smp.encoders.encoders)) from None
        if cfg.encoder_weights is not None:
            load_encoder_weights(self.encoder, cfg.encoder, cfg.encoder_weights)
        chans = tuple(self.encoder.out_channels)
        self.decoders = nn.ModuleDict({
            "np": _Decoder(chans, cfg, 2), "hv": _Decoder(chans, cfg, 2), "nc": _Decoder(chans, cfg, cfg.n_types + 1),
        })
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.encoder_frozen = False

    def freeze_encoder(self, frozen: bool = True) -> None:
        """Phase 1 of HoVerNet's recipe: no gradients into the encoder (its BN stays in train mode, as HoVerNet)."""
        self.encoder_frozen = frozen
        for p in self.encoder.parameters():
            p.requires_grad_(not frozen)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % 32 or x.shape[3] % 32:
            raise ValueError(f"expected images [N, 3, H, W] with H, W multiples of 32, got {tuple(x.shape)}")
        x = (x - self.mean) / self.std
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            feats = self.encoder(x)
        return {k: dec(feats) for k, dec in self.decoders.items()}


def load_encoder_weights(encoder: nn.Module, name: str, weights: str | os.PathLike) -> None:
    """Load encoder weights from a local file; nothing is downloaded (``"imagenet"`` is refused:
    pass a local copy of those weights instead).

    A local file is a safetensors file or a ``torch.save`` state dict (read with
    ``weights_only=True``); keys may carry an ``encoder.`` prefix.

    Raises:
        InputError: ``"imagenet"``, or a file that is missing, unreadable or does not fit.
    """
    check_encoder_weights(weights)
    state = _read_state_dict(Path(weights))
    state = {k.removeprefix("encoder."): v for k, v in state.items()}
    try:
        encoder.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"{weights}: weights do not fit encoder {name!r}: {str(exc).splitlines()[0]}") from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputError(f"{path}: encoder weights file not found (use None or a local weights file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: not a readable weights file ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state
