"""The study configuration (``config.json`` of a study folder) and its named presets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nasdm_aug.config import ConfigBase
from nasdm_aug.sampling import SamplerOptions, check_guidance_interval
from nasdm_aug.studies.registry import BANK_REGISTRY, DEFAULT_LABEL_FRACTIONS
from nasdm_aug.synthesize.config import check_mask_tries
from nasdm_aug.utils import InputError, unknown_name

__all__ = ["StudyConfig", "STUDY_PRESETS", "get_study_preset"]

# the flat fields of configs written before banks were records
_OLD_BANK_KEYS = {"s1": "S1", "s2": "S2", "balance_bank": "B"}


@dataclass(frozen=True)
class StudyConfig(ConfigBase):
    """Everything a study run needs; written as ``config.json`` in the output folder."""

    name: str = "demo"  # preset name, for the report
    store: str = ""  # the real PatchStore; "" = prepare one from ``source`` (or toy tissue) into OUT/data
    source: str = ""  # dataset folder to prepare when ``store`` is empty ("" = toy tissue)
    source_format: str = "toy"  # prepare format: toy, lizard, consep, conic, pannuke
    toy_images: int = 40  # toy: images to generate
    toy_size: int = 256  # toy: image side in pixels
    patch_size: int = 128  # prepare: patch side (must match the NASDM models)
    stride: int = 64  # prepare: step between patches
    magnification: float = 0.0  # prepare: objective power of the patches (e.g. 20); 0 = the source's own
    split_counts: tuple[int, ...] = ()  # prepare: (Test, R2, R1) images; () = the paper's fractions
    model: tuple[str, ...] = ()  # NASDM runs making S1 / S2 ("toy" = embedded); () = banks must be given
    # existing banks by name (studies.registry.BANK_REGISTRY: S1, S2, B, RC) -> BANK.h5; a bank the rows
    # need and not named here is made in OUT/banks/NAME.h5 with ``model``
    banks: dict[str, str] = field(default_factory=dict)
    balance_target: str = "uniform"  # balance study: uniform, sqrt or name=weight,... (nasdm_aug.mixing.balance)
    # the synthesis fields below: None = the models' recommended sampling (sampling.json in their
    # runs, synthesize.model_recommendations), else synthesize's default
    sampling: SamplerOptions | None = None  # synthesis sampler and steps
    guidance: float | None = None  # synthesis guidance
    # synthesis: guide the patch model only where low < sigma_t <= high (synthesize's default: every
    # step; SynthesizeConfig.guidance_interval)
    guidance_interval: tuple[float, float] | None = None
    # synthesis of generated masks (banks B): the mask model's guidance scale and the noise levels
    # where it applies (SynthesizeConfig.mask_guidance(_interval))
    mask_guidance: float | None = None
    mask_guidance_interval: tuple[float, float] | None = None
    # synthesis of generated masks (banks B): the mask model's own sampler and steps
    # (synthesize's default: ``sampling`` drives both models; SynthesizeConfig.mask_sampling)
    mask_sampling: SamplerOptions | None = None
    # synthesis of generated masks (banks B): draws per mask at most, a mask that misses the types
    # its combination asks for drawn again (SynthesizeConfig.mask_tries; None: synthesize's default)
    mask_tries: int | None = None
    synth_batch_size: int = 8
    hovernet_preset: str = "tiny"  # hovernet.config preset
    epochs: tuple[int, ...] = ()  # (phase 1, phase 2) epochs overriding the preset
    batch_size: int = 0  # HoVerNet batch size (0 = preset)
    # HoVerNet's H&E stain jitter (scale, shift) over the preset's (HoVerNetConfig.hed_scale /
    # hed_shift); () = the preset's, none in every preset
    hed_jitter: tuple[float, ...] = ()
    n_runs: int = 3  # runs per row (seeds seed .. seed + n_runs - 1)
    val_patches: int = 0  # validation patches drawn from Train outside R1 (0 = keep the last epoch)
    seed: int = 0
    device: str = "auto"
    test: str = ""  # external test set: STORE.h5[:SPLIT] or a dataset folder; "" = the store's own Test split
    # equal steps: every row's epoch holds the same number of patches (a smaller row's own patches
    # repeated, each repeat augmented afresh), so every row takes the same optimiser steps with the same
    # learning-rate schedule in steps; False = the paper's protocol, the same epochs (more data, more steps);
    # None = each study's own (Study.equal_steps: the low-label study's is True)
    equal_steps: bool | None = None
    epoch_patches: int = 0  # equal_steps: patches per epoch (0 = the largest row's)
    label_split: str = "R2"  # low-label study: the real split whose fractions are labelled (R2 + S2, R1 + S1)
    label_fractions: tuple[float, ...] = DEFAULT_LABEL_FRACTIONS  # low-label study: labelled shares of it
    label_synthetic_ratio: float = 0.25  # low-label study: synthetic patches added, as a share of the split
    filter_top_fraction: float = 0.5  # filtered rows: keep this best share of the bank by fidelity score...
    filter_min_fidelity: float | None = None  # ... or, if set, the patches scoring at least this
    segmenter: str = ""  # HoVerNet run scoring a bank that filtered rows need and that holds no scores yet
    paste_prob: float = 0.5  # copy-paste rows: probability that an item gets pasted nuclei

    def __post_init__(self) -> None:
        if self.n_runs < 1:
            raise ValueError(f"n_runs must be >= 1, got {self.n_runs}")
        if self.epochs and (len(self.epochs) != 2 or min(self.epochs) < 0 or sum(self.epochs) < 1):
            raise ValueError(f"epochs must be (phase1, phase2) with at least one epoch, got {self.epochs}")
        if self.hed_jitter and (len(self.hed_jitter) != 2 or not 0 <= self.hed_jitter[0] < 1 or not self.hed_jitter[1] >= 0):
            raise ValueError(f"hed_jitter must be (scale, shift) with 0 <= scale < 1 and shift >= 0, got {self.hed_jitter}")
        if self.val_patches < 0 or self.batch_size < 0 or self.synth_batch_size < 1:
            raise ValueError("val_patches and batch_size must be >= 0, synth_batch_size >= 1")
        if self.guidance is not None and not self.guidance >= 0:
            raise ValueError(f"guidance must be >= 0, got {self.guidance}")
        if self.mask_guidance is not None and not self.mask_guidance >= 0:
            raise ValueError(f"mask_guidance must be >= 0, got {self.mask_guidance}")
        if self.mask_tries is not None:
            check_mask_tries(self.mask_tries)
        object.__setattr__(self, "guidance_interval", check_guidance_interval(self.guidance_interval))
        object.__setattr__(self, "mask_guidance_interval", check_guidance_interval(self.mask_guidance_interval))
        if self.magnification < 0:
            raise ValueError(f"magnification must be >= 0 (0 = the source's own), got {self.magnification}")
        if self.epoch_patches < 0:
            raise ValueError(f"epoch_patches must be >= 0 (0 = the largest row's), got {self.epoch_patches}")
        if not self.label_fractions or not all(0 < f <= 1 for f in self.label_fractions):
            raise ValueError(f"label_fractions must be shares in (0, 1], got {self.label_fractions}")
        real_masks = [b.split for b in BANK_REGISTRY.values() if b.masks == "real"]
        if self.label_split not in real_masks:
            raise ValueError(f"label_split {self.label_split!r} has no bank made from its masks; valid: "
                             f"{', '.join(real_masks)}")
        if not self.label_synthetic_ratio > 0:
            raise ValueError(f"label_synthetic_ratio must be > 0, got {self.label_synthetic_ratio}")
        if not 0 < self.filter_top_fraction <= 1:
            raise ValueError(f"filter_top_fraction must be in (0, 1], got {self.filter_top_fraction}")
        if self.filter_min_fidelity is not None and not 0 <= self.filter_min_fidelity <= 1:
            raise ValueError(f"filter_min_fidelity must be in [0, 1], got {self.filter_min_fidelity}")
        if not 0 <= self.paste_prob <= 1:
            raise ValueError(f"paste_prob must be in [0, 1], got {self.paste_prob}")
        unknown = sorted(set(self.banks) - set(BANK_REGISTRY))
        if unknown:
            raise unknown_name("bank", unknown[0], BANK_REGISTRY)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StudyConfig":
        """As :meth:`ConfigBase.from_dict`; configs written when the synthesis options were flat
        fields (``sampler`` "", ``steps`` 0 and ``guidance`` -1 for the defaults), or the banks were
        the fields ``s1``, ``s2`` and ``balance_bank``, are read too."""
        data = SamplerOptions.nest_flat_keys(data)
        if isinstance(data, dict) and any(k in data for k in _OLD_BANK_KEYS):  # before banks were records
            data = dict(data)
            old = {_OLD_BANK_KEYS[k]: data.pop(k) for k in list(data) if k in _OLD_BANK_KEYS}
            data["banks"] = {**{k: v for k, v in old.items() if v}, **data.get("banks", {})}
        if isinstance(data, dict) and data.get("sampling") == {}:
            data = {**data, "sampling": None}
        if isinstance(data, dict) and isinstance(data.get("guidance"), (int, float)) and data["guidance"] < 0:
            data = {**data, "guidance": None}
        return super().from_dict(data)


STUDY_PRESETS: dict[str, StudyConfig] = {
    # toy tissue, the embedded toy NASDM models and a tiny HoVerNet: minutes on a 2-core CPU
    "demo": StudyConfig(name="demo", toy_images=24, toy_size=256, patch_size=64, stride=64, split_counts=(4, 4, 4),
                        model=("toy",), sampling=SamplerOptions(steps=25), hovernet_preset="tiny", epochs=(1, 3), batch_size=8, n_runs=2),
    # real CoNSeP laid out like ../shared/data/consep (pass --source and NASDM runs trained on it),
    # brought from its 40x to Lizard's 20x, where 64-px patches hold about as much tissue as 128 at 40x;
    # S1 / S2 / B / RC (if made here): the patch model by DPM-Solver++(2M) in 15 steps at guidance
    # 1.5, guided only up to sigma 5.42 ("Guidance limited to an interval of noise levels" in
    # benchmarks/RESULTS.md). With the shipped x_0 patch model a deterministic sampler draws real
    # CoNSeP's stain colour with half the stray specks of ancestral DDPM (S2: FID 1.34x the R1
    # baseline against 1.46x), and DPM-Solver++ in 15 steps draws DDIM 50's patches (a mean 1.9 grey
    # levels apart) at the same scores in a third of the time ("Deterministic sampling of the patch
    # model", "Fewer steps"). The mask model of bank B keeps ancestral DDPM in 50 steps, the sampling
    # its guidance was tuned under: by DDIM it drew two nuclei a patch too many and packed them
    # tighter (count distance 3.7 against 2.3), for better type control; its bank gave the same gain.
    "consep": StudyConfig(name="consep", source_format="consep", magnification=20.0, patch_size=64, stride=32,
                          sampling=SamplerOptions("dpmpp_2m", steps=15), guidance=1.5, guidance_interval=(0.0, 5.42),
                          mask_sampling=SamplerOptions("ddpm", steps=50),
                          hovernet_preset="tiny", epochs=(2, 3), n_runs=3, val_patches=64),
    # the paper's full protocol on Lizard (GPUs): 128-px patches, HoVerNet 50 + 50 epochs
    "lizard": StudyConfig(name="lizard", source_format="lizard", patch_size=128, stride=64,
                          hovernet_preset="paper", n_runs=3, val_patches=512, synth_batch_size=32),
}


def get_study_preset(name_or_path: str) -> StudyConfig:
    """A named preset or a StudyConfig JSON file.

    Raises:
        InputError: neither a preset name nor a readable config file.
    """
    if name_or_path in STUDY_PRESETS:
        return STUDY_PRESETS[name_or_path]
    if name_or_path.endswith(".json"):
        return StudyConfig.load(name_or_path)
    raise unknown_name("preset", name_or_path, STUDY_PRESETS, extra=", or a CONFIG.json path")


def parse_bank_args(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``NAME=PATH`` pairs (``--bank S2=s2.h5``) as ``{name: path}``.

    Raises:
        InputError: an item without ``=``, or a name not in ``BANK_REGISTRY``.
    """
    banks: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise InputError(f"--bank {item!r}: expected NAME=BANK.h5 with NAME one of {', '.join(BANK_REGISTRY)}")
        if name.strip() not in BANK_REGISTRY:
            raise unknown_name("bank", name.strip(), BANK_REGISTRY)
        banks[name.strip()] = path.strip()
    return banks


def study_config(preset: str, **options: Any) -> StudyConfig:
    """The preset (a name or a CONFIG.json) with the options given (None = keep the preset's).

    ``banks`` (``{name: path}``) is merged into the preset's; ``epochs`` may be ``"P1,P2"``;
    ``label_fractions`` may be ``"0.1,0.25"``; ``hed_jitter`` ``"SCALE,SHIFT"`` or a pair.

    Raises:
        InputError: an unknown preset, a malformed option, or a value the config refuses (one line).
    """
    config = get_study_preset(preset)
    changes = {k: v for k, v in options.items() if v is not None and v != ()}
    if "banks" in changes:
        changes["banks"] = {**config.banks, **changes["banks"]}
    for key, kind in (("epochs", int), ("label_fractions", float), ("hed_jitter", float)):
        if isinstance(changes.get(key), str):
            try:
                changes[key] = tuple(kind(x) for x in changes[key].split(","))
            except ValueError:
                raise InputError(f"`{key}` {changes[key]!r}: expected comma-separated numbers") from None
    if "model" in changes:
        changes["model"] = tuple(changes["model"])
    if "hed_jitter" in changes:
        changes["hed_jitter"] = tuple(changes["hed_jitter"])
    try:
        return config.replace(**changes)
    except ValueError as exc:
        raise InputError(str(exc)) from None
