"""U-Net configuration and the named presets: ``tiny`` for a CPU, ``paper`` for NASDM/SDM at 128 px (NASDM 4.1)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from nasdm_aug.config import ConfigBase
from nasdm_aug.data.masks import mask_channels
from nasdm_aug.utils import unknown_name

__all__ = ["UNetConfig", "PRESETS", "INPUT_CONDITIONS", "get_preset", "fit_to_size"]

#: Where the patch condition enters besides the SPADE norms of the middle and decoder: "none" (SDM /
#: NASDM: the encoder never sees the layout) or "mask" (its type channels and instance-edge map also
#: concatenated to the noisy image at the input, a departure from the paper).
INPUT_CONDITIONS: tuple[str, ...] = ("none", "mask")


@dataclass(frozen=True)
class UNetConfig(ConfigBase):
    """One U-Net; ``kind`` picks the patch (SPADE) or the mask (multi-hot) configuration."""

    kind: Literal["patch", "mask"] = "patch"  # which NASDM model
    image_size: int = 64  # training size in pixels; sets where attention sits
    in_channels: int = 3  # 3 (RGB) for patch, mask_channels(n_types) for mask
    out_channels: int = 6  # 2 * in_channels: eps and the variance interpolation v
    base_channels: int = 32  # channels of the first level
    channel_mults: tuple[int, ...] = (1, 2, 2)  # level widths in units of base_channels
    num_res_blocks: int = 1  # resblocks per level in the encoder (+1 in the decoder)
    attention_resolutions: tuple[int, ...] = (16,)  # feature sizes in pixels that get attention
    head_channels: int = 32  # channels per attention head
    dropout: float = 0.0  # dropout inside resblocks
    n_types: int = 6  # nuclei types (the condition's width follows from it)
    cond_drop_prob: float = 0.2  # training-time probability of the null condition (CFG)
    norm_groups: int = 8  # GroupNorm groups; divides every level's width
    spade_hidden: int = 32  # hidden width of each SPADE conv net (patch only)
    input_condition: str = "none"  # patch only: one of INPUT_CONDITIONS

    @property
    def input_cond_channels(self) -> int:
        """Condition channels concatenated to x at the first convolution (0 without input conditioning)."""
        return self.cond_channels if self.input_condition == "mask" else 0

    def __post_init__(self) -> None:
        self._check_scalars()
        widths = [self.base_channels * m for m in self.channel_mults]
        bad = [w for w in widths if w % self.norm_groups or w % self.head_channels]
        if bad:
            raise ValueError(
                f"level widths {widths} must be multiples of norm_groups={self.norm_groups} "
                f"and head_channels={self.head_channels}; {bad} are not"
            )
        reachable = {self.image_size >> level for level in range(len(self.channel_mults))}
        missing = sorted(set(self.attention_resolutions) - reachable)
        if missing:
            raise ValueError(f"attention_resolutions {missing} are not feature sizes of this U-Net: {sorted(reachable)}")
        if self.input_condition not in INPUT_CONDITIONS:
            raise unknown_name("input_condition", self.input_condition, INPUT_CONDITIONS)
        if self.kind == "mask" and self.input_condition != "none":
            raise ValueError(f"input_condition {self.input_condition!r} needs a spatial condition: the mask model takes "
                             "a type-presence vector, so it has only 'none'")
        if self.kind == "mask" and self.in_channels != mask_channels(self.n_types):
            raise ValueError(
                f"mask model in_channels must be mask_channels({self.n_types}) = {mask_channels(self.n_types)}, "
                f"got {self.in_channels}"
            )

    def _check_scalars(self) -> None:
        if self.kind not in ("patch", "mask"):
            raise ValueError(f"kind must be 'patch' or 'mask', got {self.kind!r}")
        for name in ("image_size", "in_channels", "base_channels", "num_res_blocks", "head_channels", "n_types"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.norm_groups < 1 or self.spade_hidden < 1:
            raise ValueError(f"norm_groups and spade_hidden must be >= 1, got {self.norm_groups}, {self.spade_hidden}")
        if self.out_channels not in (self.in_channels, 2 * self.in_channels):
            raise ValueError(
                f"out_channels must be in_channels (fixed variance) or 2 * in_channels (learned), "
                f"got {self.out_channels} for in_channels={self.in_channels}"
            )
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise ValueError(f"channel_mults must be positive integers, got {self.channel_mults}")
        if self.image_size % (1 << (len(self.channel_mults) - 1)):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2**{len(self.channel_mults) - 1} (one halving per level)"
            )
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError(f"dropout and cond_drop_prob must lie in [0, 1), got {self.dropout}, {self.cond_drop_prob}")

    @property
    def cond_channels(self) -> int:
        """Width of the condition: the patch map (1 + n_types + 1) or the presence vector (n_types)."""
        return self.n_types + 2 if self.kind == "patch" else self.n_types


_TINY: dict[str, Any] = dict(
    image_size=64, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, attention_resolutions=(16,),
    head_channels=32, norm_groups=8, spade_hidden=32, dropout=0.0,
)  # fmt: skip
# SDM/NASDM for 128-px Lizard: 256 channels, mults 1,1,2,3,4, 2 resblocks, attention 32/16/8, 64-ch heads
_PAPER: dict[str, Any] = dict(
    image_size=128, base_channels=256, channel_mults=(1, 1, 2, 3, 4), num_res_blocks=2,
    attention_resolutions=(32, 16, 8), head_channels=64, norm_groups=32, spade_hidden=128, dropout=0.0,
)  # fmt: skip
PRESETS: dict[str, dict[str, Any]] = {"tiny": _TINY, "paper": _PAPER}


def fit_to_size(preset: dict[str, Any], image_size: int, keep: frozenset[str] = frozenset(),
                *, channel_mults: tuple[int, ...] | None = None) -> dict[str, Any]:
    """The preset's depth and attention levels for ``image_size``.

    A preset is designed at one size (``preset["image_size"]``). At another size, levels are
    added (width multiplier 1, at full resolution) or removed (from the top) so the lowest feature
    size stays the preset's, and attention stays at the same feature sizes in pixels, so a 128-px
    ``tiny`` model has the 64-px one's bottleneck and attention, one level higher up. Sizes that
    are not the preset's times a power of two keep as many halvings as fit and put attention at
    the reachable feature sizes nearest (in octaves) to the preset's. Fields named in ``keep``
    (explicit overrides) are left as given; ``channel_mults``, the value of a kept depth, is the
    one attention is placed on (without it, the preset's).

    Raises:
        ValueError: ``image_size`` smaller than the preset's lowest feature size.
    """
    base, mults = int(preset["image_size"]), tuple(preset["channel_mults"])
    bottom = base >> (len(mults) - 1)
    out = {**preset, "image_size": image_size}
    if image_size == base:
        return out
    if image_size < bottom:
        raise ValueError(f"image size {image_size} is smaller than this preset's lowest feature size {bottom} px")
    if "channel_mults" not in keep:
        levels = 1
        while image_size % (1 << levels) == 0 and (image_size >> levels) >= bottom:
            levels += 1
        extra = levels - len(mults)
        mults = (1,) * extra + mults if extra >= 0 else mults[-extra:]
        out["channel_mults"] = mults
    elif channel_mults is not None:  # an explicit depth: attention goes on it, not on the preset's
        out["channel_mults"] = tuple(channel_mults)
    if "attention_resolutions" not in keep:
        sizes = [image_size >> level for level in range(len(out["channel_mults"]))]
        if image_size % (1 << (len(out["channel_mults"]) - 1)) == 0:
            nearest = {min(sizes, key=lambda f: (abs(math.log2(f / a)), f)) for a in preset["attention_resolutions"]}
            out["attention_resolutions"] = tuple(sorted(nearest, reverse=True))
    return out


def get_preset(kind: str, name: str, **overrides: Any) -> UNetConfig:
    """Return the named preset for ``kind`` ("patch" | "mask"), with optional field overrides.

    An ``image_size`` override other than the preset's own adapts depth and attention to it
    (:func:`fit_to_size`) unless ``channel_mults`` / ``attention_resolutions`` are given too. For
    the mask model, in/out channels follow ``n_types`` unless given.

    Raises:
        InputError: unknown preset name (the message lists the valid ones).
        ValueError: an invalid kind or an override the config rejects.
    """
    if name not in PRESETS:
        raise unknown_name("preset", name, sorted(PRESETS))
    preset = PRESETS[name]
    if "image_size" in overrides:
        preset = fit_to_size(preset, int(overrides["image_size"]), frozenset(overrides),
                             channel_mults=overrides.get("channel_mults"))
    fields = {"kind": kind, **preset, **overrides}
    if kind == "mask":  # presets hold no in/out channels, so these defaults never mask an override
        fields.setdefault("in_channels", mask_channels(fields.get("n_types", 6)))
        fields.setdefault("out_channels", 2 * fields["in_channels"])
    return UNetConfig(**fields)
