"""The study configuration (``config.json`` of a study folder) and its named presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nasdm_aug.config import ConfigBase
from nasdm_aug.sampling import SamplerOptions
from nasdm_aug.utils import InputError

__all__ = ["StudyConfig", "STUDY_PRESETS", "get_study_preset"]


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
    s1: str = ""  # an existing S1 bank (synthetic from R1 masks); "" = make it in OUT/banks
    s2: str = ""  # an existing S2 bank (synthetic from R2 masks)
    balance_bank: str = ""  # an existing bank of generated rare-type patches; "" = make it with --balance-for
    balance_target: str = "uniform"  # balance study: uniform, sqrt or name=weight,... (nasdm_aug.mixing.balance)
    sampling: SamplerOptions | None = None  # synthesis sampler and steps (None = synthesize's default)
    guidance: float | None = None  # synthesis guidance (None = synthesize's default)
    synth_batch_size: int = 8
    hovernet_preset: str = "tiny"  # hovernet.config preset
    epochs: tuple[int, ...] = ()  # (phase 1, phase 2) epochs overriding the preset
    batch_size: int = 0  # HoVerNet batch size (0 = preset)
    n_runs: int = 3  # runs per row (seeds seed .. seed + n_runs - 1)
    val_patches: int = 0  # validation patches drawn from Train outside R1 (0 = keep the last epoch)
    seed: int = 0
    device: str = "auto"
    test: str = ""  # external test set: STORE.h5[:SPLIT] or a dataset folder; "" = the store's own Test split

    def __post_init__(self) -> None:
        if self.n_runs < 1:
            raise ValueError(f"n_runs must be >= 1, got {self.n_runs}")
        if self.epochs and (len(self.epochs) != 2 or min(self.epochs) < 0 or sum(self.epochs) < 1):
            raise ValueError(f"epochs must be (phase1, phase2) with at least one epoch, got {self.epochs}")
        if self.val_patches < 0 or self.batch_size < 0 or self.synth_batch_size < 1:
            raise ValueError("val_patches and batch_size must be >= 0, synth_batch_size >= 1")
        if self.guidance is not None and not self.guidance >= 0:
            raise ValueError(f"guidance must be >= 0, got {self.guidance}")
        if self.magnification < 0:
            raise ValueError(f"magnification must be >= 0 (0 = the source's own), got {self.magnification}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StudyConfig":
        """As :meth:`ConfigBase.from_dict`; a config written when the synthesis options were flat
        fields (``sampler`` "", ``steps`` 0 and ``guidance`` -1 for the defaults) is read too."""
        data = SamplerOptions.nest_flat_keys(data)
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
    # S1 / S2 (if made here) by ancestral DDPM in 25 unguided steps, so they fit a CPU sitting
    # (DPM-Solver++(2M) at 20 steps left visible noise with these models: docs/real-tissue.md)
    "consep": StudyConfig(name="consep", source_format="consep", magnification=20.0, patch_size=64, stride=32,
                          sampling=SamplerOptions("ddpm", steps=25), guidance=1.0, hovernet_preset="tiny", epochs=(2, 3),
                          n_runs=3, val_patches=64),
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
    raise InputError(f"unknown preset {name_or_path!r}; valid: {', '.join(STUDY_PRESETS)}, or a CONFIG.json path")
