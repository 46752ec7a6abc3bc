"""What a bank is made of: :class:`SynthesizeConfig` (its masks' source, sampler, seed, precision
and layout) and :class:`RecombineOptions`; saved in the bank and beside its parts for resuming."""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nasdm_aug.config import ConfigBase
from nasdm_aug.generator import (DEFAULT_GUIDANCE, DEFAULT_MARKER_THRESHOLD, DEFAULT_MASK_GUIDANCE,
                                 DEFAULT_MASK_GUIDANCE_INTERVAL)
from nasdm_aug.hardware import LAYOUT_CHOICES, PRECISIONS, precision_name
from nasdm_aug.data.store import PatchStore, parse_store_arg
from nasdm_aug.mixing.balance import parse_target, resolve_target, split_combination
from nasdm_aug.mixing.paste import PasteOptions
from nasdm_aug.sampling import SamplerOptions, check_guidance_interval
from nasdm_aug.utils import InputError

__all__ = ["SynthesizeConfig", "RecombineOptions", "Source", "recombine_options", "open_store_arg",
           "model_recommendations", "check_mask_tries"]

# a source given as an option replaces the config's whole
_NO_SOURCE = {"masks": "", "types": "", "num": 0, "split": "", "indices": [], "combinations": [], "recombine": None}
_NO_CONFIG = {"types": "all", "num": 1}


class Source(str, enum.Enum):
    """Where a bank's masks come from (exactly one of the config's four source fields is set)."""

    MASKS = "masks"  # a real store's masks: one synthetic patch per mask (S1 / S2)
    TYPES = "types"  # generated masks for a choice of types ("all", "random", names), num of them
    COMBINATIONS = "combinations"  # generated masks per explicit type combination, with counts
    RECOMBINE = "recombine"  # real masks of a split with real nuclei of its rare types added


@dataclass(frozen=True)
class RecombineOptions(ConfigBase):
    """How ``recombine`` masks are made (:func:`nasdm_aug.mixing.recombine_masks`, seeded by the run's seed).

    Args:
        store: the real PatchStore whose masks and nuclei are recombined.
        split: its split.
        target: ``"uniform"``, ``"sqrt"`` or ``"name=weight,..."``: the type shares to move toward.
        n: masks to make (0: one per mask of the split).
        max_per_mask: most nuclei added to one mask.
        paste: area bounds, flips, scale, margin and tries of the placement.
    """

    store: str = ""
    split: str = "Train"
    target: str = "sqrt"
    n: int = 0
    max_per_mask: int = 8
    paste: PasteOptions = field(default_factory=PasteOptions)

    def __post_init__(self) -> None:
        if not self.store:
            raise ValueError("recombine needs a real store (recombine.store)")
        if self.n < 0 or self.max_per_mask < 1:
            raise ValueError(f"recombine needs n >= 0 and max_per_mask >= 1, got n={self.n}, "
                             f"max_per_mask={self.max_per_mask}")
        parsed = parse_target(self.target)
        if isinstance(parsed, str):  # "Uniform" and "uniform" are one configuration
            object.__setattr__(self, "target", parsed)
        if isinstance(self.paste, dict):
            object.__setattr__(self, "paste", PasteOptions.from_dict(self.paste))
        if self.paste.allow_overlap:
            raise ValueError("recombine keeps every real nucleus whole: paste.allow_overlap must be false")

    def resolved_target(self) -> str | dict[str, float]:
        """The target as :func:`~nasdm_aug.mixing.recombine_masks` takes it."""
        return parse_target(self.target)


@dataclass(frozen=True)
class SynthesizeConfig(ConfigBase):
    """What to synthesize and how; saved in the bank and beside its parts for resuming."""

    model: tuple[str, ...] = ("toy",)  # "toy" (embedded models) or the mask and/or patch run dirs
    masks: str = ""  # a real PatchStore: one synthetic patch per real mask (S1 / S2)
    split: str = ""  # with masks: the split whose masks are used ("" = all patches)
    indices: tuple[int, ...] = ()  # with masks: explicit patch indices (instead of a split)
    types: str = ""  # generated masks: "all", "random" or comma-separated type names
    num: int = 0  # generated masks: how many patches
    # generated masks for explicit type combinations, "name+name:count" each, made in this order
    # (nasdm-aug synthesize --balance-for works them out; see nasdm_aug.mixing.balance)
    combinations: tuple[str, ...] = ()
    # real masks of a split with real nuclei of its rare types added (nasdm-aug synthesize --recombine)
    recombine: RecombineOptions | None = None
    sampling: SamplerOptions = field(default_factory=SamplerOptions)  # sampler, steps and its options
    guidance: float = DEFAULT_GUIDANCE  # the patch model's classifier-free guidance scale (1 = none)
    # the patch model is guided only where low < sigma_t <= high (NASDMGenerator.generate_patches);
    # None: at every step
    guidance_interval: tuple[float, float] | None = None
    # generated masks: the mask model's guidance scale (generator.DEFAULT_MASK_GUIDANCE says why it differs)
    mask_guidance: float = DEFAULT_MASK_GUIDANCE
    # generated masks: the mask model is guided only where low < sigma_t <= high
    # (NASDMGenerator.generate_masks); None: at every step
    mask_guidance_interval: tuple[float, float] | None = DEFAULT_MASK_GUIDANCE_INTERVAL
    # generated masks: the mask model's own sampler and steps; None: ``sampling`` drives both models.
    # The mask model's guidance was tuned under ancestral DDPM, where a deterministic sampler draws
    # denser masks, so a bank may sample its patches one way and its masks another
    mask_sampling: SamplerOptions | None = None
    seed: int = 0  # run seed; patch i is seeded by (seed, i)
    batch_size: int = 8  # patches per forward, and per resumable chunk
    ema: bool = True  # sample with the EMA weights
    min_size: int = 10  # generated masks: smallest nucleus kept, in pixels
    # generated masks: decode_mask's distance-peak markers (generator.DEFAULT_MARKER_THRESHOLD says why)
    marker_threshold: float = DEFAULT_MARKER_THRESHOLD
    # generated masks: draws per mask at most; a mask whose decoded types differ from its request is
    # drawn again with fresh noise (NASDMGenerator.generate_masks' max_tries); 1: the first draw stays
    mask_tries: int = 1
    # "auto" (bf16 where it is native, else fp32: hardware.resolve_precision), "fp32" or "bf16" (autocast)
    precision: str = "auto"
    # memory layout of the models and samples: "auto" (contiguous on a CUDA GPU, channels_last
    # elsewhere: hardware.resolve_sampling_layout), "channels_last" or "contiguous"
    layout: str = "auto"
    compile: bool = False  # sample through torch.compile of the networks (NASDMGenerator's compile)

    def __post_init__(self) -> None:
        if isinstance(self.recombine, dict):  # as written in a study's or a user's options
            object.__setattr__(self, "recombine", RecombineOptions.from_dict(self.recombine))
        given = [s.value for s in Source if getattr(self, s.value)]
        if len(given) != 1:
            raise ValueError(f"give exactly one source, not {' and '.join(given) or 'none'}: masks (a real store) "
                             "or types (generated masks) or combinations (generated masks per type combination) "
                             "or recombine (real masks with added nuclei)")
        if self.recombine and (self.split or self.indices or self.num):
            raise ValueError("recombine carries its own split and count (recombine.split, recombine.n); "
                             "split, indices and num apply to masks and types")
        if self.combinations and self.num:
            raise ValueError(f"num ({self.num}) applies to types; combinations carry their own counts")
        for combo in self.combinations:
            split_combination(combo)
        if self.types and self.num < 1:
            raise ValueError(f"num must be >= 1 with types {self.types!r}, got {self.num}")
        if self.masks and self.num:
            raise ValueError(f"num ({self.num}) applies to generated masks (types), not to masks {self.masks}")
        if self.split and self.indices:
            raise ValueError(f"give split ({self.split!r}) or indices, not both")
        self._check_run_fields()

    def _check_run_fields(self) -> None:
        """The sampling, seed, batch, precision and layout fields."""
        if not isinstance(self.sampling, SamplerOptions):
            raise ValueError(f"sampling must be SamplerOptions, got {type(self.sampling).__name__}")
        if self.mask_sampling is not None and not isinstance(self.mask_sampling, SamplerOptions):
            raise ValueError(f"mask_sampling must be SamplerOptions or None, got {type(self.mask_sampling).__name__}")
        if self.mask_sampling == self.sampling:  # one sampling for both models, however it was spelled
            object.__setattr__(self, "mask_sampling", None)
        if self.batch_size < 1 or self.seed < 0 or self.min_size < 0:
            raise ValueError(
                f"batch_size must be >= 1, seed and min_size >= 0; got "
                f"batch_size={self.batch_size}, seed={self.seed}, min_size={self.min_size}"
            )
        if not self.guidance >= 0:
            raise ValueError(f"guidance must be >= 0, got {self.guidance}")
        if not self.mask_guidance >= 0:
            raise ValueError(f"mask_guidance must be >= 0, got {self.mask_guidance}")
        check_mask_tries(self.mask_tries)
        # an empty interval (the CLI's "all") is every step, as None
        object.__setattr__(self, "guidance_interval", check_guidance_interval(self.guidance_interval or None))
        object.__setattr__(self, "mask_guidance_interval",
                           check_guidance_interval(self.mask_guidance_interval or None))
        if not (self.types or self.combinations):
            # real (or recombined) masks sample no mask: the mask model's settings are today's
            # defaults, so that they neither show in the record nor keep a bank from counting as made
            object.__setattr__(self, "mask_guidance", DEFAULT_MASK_GUIDANCE)
            object.__setattr__(self, "mask_guidance_interval", DEFAULT_MASK_GUIDANCE_INTERVAL)
            object.__setattr__(self, "mask_sampling", None)
            object.__setattr__(self, "mask_tries", 1)
        if not 0 <= self.marker_threshold < 1:
            raise ValueError(f"marker_threshold must lie in [0, 1), got {self.marker_threshold}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.layout not in LAYOUT_CHOICES:
            raise ValueError(f"layout must be one of {', '.join(LAYOUT_CHOICES)}, got {self.layout!r}")

    @property
    def source(self) -> Source:
        """Which of ``masks``, ``types``, ``combinations`` and ``recombine`` this config draws its masks from."""
        return next(s for s in Source if getattr(self, s.value))

    @property
    def mask_sampler_options(self) -> SamplerOptions:
        """How the mask model samples: ``mask_sampling``, or ``sampling`` when that is None."""
        return self.mask_sampling or self.sampling

    @property
    def mask_store(self) -> str:
        """The real store the masks come from (``masks`` or ``recombine.store``); "" for generated masks."""
        return self.masks or (self.recombine.store if self.recombine else "")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SynthesizeConfig":
        """As :meth:`ConfigBase.from_dict`; a record written before the sampler options were one
        object (top-level ``sampler``, ``steps``, ``eta``) is read into ``sampling``, and one written
        when synthesis took a torch dtype name (``dtype``: ``float32``, ``bfloat16`` or ``auto``) is
        read as that ``precision`` (``fp32``, ``bf16``, ``auto``)."""
        return super().from_dict(precision_from_dtype(SamplerOptions.nest_flat_keys(data)))

    @classmethod
    def from_options(cls, config: str | os.PathLike | None = None, *, models: Sequence[str] = ("toy",),
                     masks: str | None = None, split: str | None = None, indices: str | Sequence[int] | None = None,
                     types: str | None = None, num: int | None = None, combinations: Sequence[str] = (),
                     recombine: str | None = None, target: str = "sqrt", sampler: str | None = None,
                     steps: int | None = None, eta: float | None = None, mask_sampler: str | None = None,
                     mask_steps: int | None = None, **fields: Any) -> "SynthesizeConfig":
        """The config ``nasdm-aug synthesize`` builds from its options: ``config`` (a JSON file; else
        ``types="all", num=1``) with the options given (not None) in place of its values. The
        sampling fields that neither set take the models' recommended sampling
        (:func:`model_recommendations`), then the package defaults.

        A source given (``masks``, ``types``, ``combinations`` or ``recombine``) replaces the
        config's. ``indices`` may be ``"I,J,..."``. ``recombine`` is ``STORE.h5[:SPLIT]`` (split
        Train when none is named), made toward ``target`` with ``num`` masks. Naming another
        ``sampler`` than the config's starts from that sampler's defaults. ``**fields`` are the other
        fields of the config: ``guidance``, ``guidance_interval``, ``mask_guidance``,
        ``mask_guidance_interval``, ``mask_tries``, ``seed``,
        ``batch_size``, ``marker_threshold``, ``precision`` (or its older name ``dtype``: ``float32``,
        ``bfloat16``, ``auto``), ``layout`` and ``compile``.

        Raises:
            InputError: a config file or value the config rejects, bad ``indices``, a ``recombine``
                store or split that does not exist, or ``dtype`` given with ``precision``.
        """
        base = cls.load(config).to_dict() if config else dict(_NO_CONFIG)
        if tuple(models) != ("toy",) or "model" not in base:
            base["model"] = list(models)
        # the models' own recommended sampling fills what the config file does not set; the options
        # given override both
        set_by_file = _keys_set(config) if config else set()
        for key, value in model_recommendations(base["model"]).items():
            if key not in set_by_file:
                base[key] = value.to_dict() if isinstance(value, SamplerOptions) else value
        given = {"masks": masks, "split": split, "types": types, "num": num, **fields}
        if given.get("dtype") is not None:
            given["precision"] = _precision_of_dtype(given["dtype"], given.get("precision"))
        given.pop("dtype", None)
        if masks is not None or types is not None or combinations or recombine:
            base.update(_NO_SOURCE)
        if combinations:
            base["combinations"] = list(combinations)
        if recombine:
            base["recombine"] = recombine_options(recombine, target, num)
            given["num"] = None  # the count of recombined masks lives in recombine.n
        base.update({k: v for k, v in given.items() if v is not None})
        base["sampling"] = _sampling(dict(base.get("sampling") or {}), sampler, steps, eta)
        if mask_sampler is not None or mask_steps is not None:
            start = base.get("mask_sampling") or base["sampling"]
            base["mask_sampling"] = _sampling(dict(start), mask_sampler, mask_steps, None)
        if indices is not None:
            base["indices"] = _indices(indices)
        try:
            return cls.from_dict(base)
        except ValueError as exc:
            raise InputError(str(exc)) from None


def check_mask_tries(value: Any) -> None:
    """Raise ValueError unless ``value`` is an integer >= 1 (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"mask_tries must be an integer >= 1, got {value!r}")


def model_recommendations(model: Sequence[str | os.PathLike] | str | os.PathLike) -> dict[str, Any]:
    """The :class:`SynthesizeConfig` fields the runs of ``model`` (a shipped name or run
    directories, as ``model`` takes them) recommend in their ``sampling.json``
    (:func:`~nasdm_aug.training.model_runs.recommended_sampling`): the patch run's ``sampling``,
    ``guidance`` and ``guidance_interval``, and the mask run's as ``mask_sampling``,
    ``mask_guidance`` and ``mask_guidance_interval``. {} for models that recommend nothing (the toy
    models), and for a ``model`` that names no runs: the synthesis itself then says what is wrong.

    Raises:
        InputError: a ``sampling.json`` that is not valid, naming the file.
    """
    from nasdm_aug.training.model_runs import recommended_options, resolve_model_dirs

    try:
        mask_run, patch_run = resolve_model_dirs(model)
    except InputError:
        return {}
    return recommended_options(mask_run, patch_run)


def precision_from_dtype(data: Any) -> Any:
    """A config record with the older ``dtype`` (a torch dtype name) read as its ``precision``; any
    other record as it is.

    Raises:
        ValueError: ``dtype`` beside ``precision``, or a ``dtype`` that names no precision.
    """
    if not isinstance(data, dict) or "dtype" not in data:
        return data
    data = dict(data)
    dtype = data.pop("dtype")
    if "precision" in data:
        raise ValueError(f"give precision ({data['precision']!r}), not dtype ({dtype!r}), its older name, as well")
    try:
        data["precision"] = precision_name(dtype)
    except (ValueError, TypeError):
        raise ValueError(f"dtype (now precision) must be float32, bfloat16 or auto, got {dtype!r}") from None
    return data


def _precision_of_dtype(dtype: str, precision: str | None) -> str:
    """The precision the older ``dtype`` option names (``float32`` -> ``fp32``, ``bfloat16`` -> ``bf16``)."""
    if precision is not None:
        raise InputError(f"give `precision` ({precision}), not `dtype` ({dtype}), its older name, as well")
    try:
        return precision_name(dtype)
    except ValueError:
        raise InputError(f"`dtype` (now `precision`) must be float32, bfloat16 or auto, got {dtype!r}") from None


def _keys_set(config: str | os.PathLike) -> set[str]:
    """The fields a config file sets itself (older flat sampler keys count as ``sampling``)."""
    data = json.loads(Path(config).read_text())  # cls.load has read it already
    return set(SamplerOptions.nest_flat_keys(data)) if isinstance(data, dict) else set()


def _indices(indices: str | Sequence[int]) -> list[int]:
    if not isinstance(indices, str):
        return [int(v) for v in indices]
    try:
        return [int(v) for v in indices.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"`indices` must be comma-separated integers, got {indices!r}") from None


def _sampling(base: dict, sampler: str | None, steps: int | None, eta: float | None) -> dict:
    """The config's sampler options with those given; naming another sampler starts from its own
    defaults (its steps, no options of the previous one)."""
    if sampler is not None and sampler != base.get("sampler"):
        base = {k: v for k, v in base.items() if k in ("spacing", "clip_denoised")} | {"sampler": sampler}
    if steps is not None:
        base["steps"] = steps
    if eta is not None:
        base["eta"] = eta
    return base


def open_store_arg(arg: str, option: str) -> tuple[str, PatchStore, str]:
    """(path, PatchStore, split) of the ``option`` ``STORE.h5[:SPLIT]`` (split Train when none is named).

    Raises:
        InputError: a store that does not exist or a split it lacks, naming ``option``.
    """
    path, split = parse_store_arg(arg, "Train")
    if not Path(path).is_file():
        raise InputError(f"`{option}`: {path} does not exist")
    store = PatchStore(path)
    if split not in store.splits:
        raise InputError(f"`{option}`: {path} has no split {split!r} (splits: {', '.join(store.splits) or 'none'})")
    return path, store, split


def recombine_options(arg: str, target: str, num: int | None) -> dict[str, Any]:
    """``RecombineOptions`` fields for ``recombine`` ``STORE.h5[:SPLIT]`` (split Train when none is
    named), toward ``target``, ``num`` masks (None: one per mask of the split).

    Raises:
        InputError: a store or split that does not exist, a target naming a type the store lacks,
            or ``num`` < 1.
    """
    path, store, split = open_store_arg(arg, "recombine")
    resolve_target(parse_target(target), store.type_table, np.ones(store.type_table.n_types), path)  # names it lacks
    if num is not None and num < 1:
        raise InputError(f"`num` must be >= 1 with `recombine`, got {num}")
    return {"store": path, "split": split, "target": target, "n": num or 0}
