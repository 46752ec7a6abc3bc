"""The trained runs a generator loads: the models shipped inside the package by name, ``--model``
values turned into (mask run, patch run), one run's network of the expected kind, and the hash of
their weight files.

``nasdm_aug.generator`` re-exports every name here; it lives on the training floor because it reads
run directories and their configs and builds no network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from nasdm_aug.utils import InputError, file_digest

from .checkpoint import load_checkpoint, resolve_checkpoint
from .config import TrainConfig

__all__ = ["TOY_MODEL_DIR", "NAMED_MODELS", "named_model_dir", "resolve_model_dirs", "load_model_run",
           "model_weights_hash", "SAMPLING_FILE", "recommended_sampling", "recommended_options"]

_ASSETS = Path(__file__).resolve().parents[1] / "assets"
#: The tiny mask and patch models trained on the toy tissue, shipped inside the package.
TOY_MODEL_DIR = _ASSETS / "toy"
#: Models shipped inside the package, by name: each folder holds ``mask/`` and ``patch/`` (EMA
#: weights, config.json, data.json) and a MODEL_CARD.md where the data needs one.
NAMED_MODELS: dict[str, Path] = {"toy": TOY_MODEL_DIR, "consep-cpu": _ASSETS / "consep-cpu"}


#: The file in a run directory (the folder ``--model`` names) that says how its model samples best: ``{"sampling": {"sampler": ..., "steps": ...}, "guidance": G,
#: "guidance_interval": [LOW, HIGH] or null, "why": "..."}``, every key optional. ``nasdm-aug
#: synthesize`` takes it for the sampling options it is not given.
SAMPLING_FILE = "sampling.json"
_SAMPLING_KEYS = ("sampling", "guidance", "guidance_interval", "why")


def recommended_sampling(run: str | os.PathLike | None) -> dict[str, Any]:
    """The sampling a run's :data:`SAMPLING_FILE` recommends, checked: a dict with any of
    ``sampling`` (a :class:`~nasdm_aug.sampling.SamplerOptions`), ``guidance`` (a float) and
    ``guidance_interval`` (a (low, high) pair, or None for every step); {} for a run without one
    (or no run).

    Raises:
        InputError: a file that is not JSON, has keys other than those, or values the sampler
            options or the guidance checks reject; the message names the file.
    """
    if run is None:
        return {}
    path = Path(run) / SAMPLING_FILE
    if not path.is_file():
        return {}
    from nasdm_aug.sampling import SamplerOptions, check_guidance_interval

    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or set(data) - set(_SAMPLING_KEYS):
        extra = sorted(set(data) - set(_SAMPLING_KEYS)) if isinstance(data, dict) else data
        raise InputError(f"{path}: expected a JSON object with keys among {', '.join(_SAMPLING_KEYS)}, got {extra}")
    out: dict[str, Any] = {}
    try:
        if "sampling" in data:
            out["sampling"] = SamplerOptions.from_dict(data["sampling"])
        if "guidance" in data:
            guidance = data["guidance"]
            if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not guidance >= 0:
                raise ValueError(f"guidance must be a number >= 0, got {guidance!r}")
            out["guidance"] = float(guidance)
        if "guidance_interval" in data:
            out["guidance_interval"] = check_guidance_interval(data["guidance_interval"])
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: {exc}") from None
    return out


def recommended_options(mask_run: str | os.PathLike | None, patch_run: str | os.PathLike | None) -> dict[str, Any]:
    """What two runs recommend, named as the synthesis config and ``NASDMGenerator.generate`` name
    it: the patch run's ``sampling``, ``guidance`` and ``guidance_interval``, and the mask run's as
    ``mask_sampling``, ``mask_guidance`` and ``mask_guidance_interval``.

    Raises:
        InputError: as :func:`recommended_sampling`.
    """
    return {**recommended_sampling(patch_run),
            **{f"mask_{k}": v for k, v in recommended_sampling(mask_run).items()}}


def named_model_dir(name: str) -> Path | None:
    """The folder of a shipped model (``"toy"``, ``"consep-cpu"``), or None if ``name`` is not one.

    Raises:
        InputError: a known name whose files are not in this installation.
    """
    if name not in NAMED_MODELS:
        return None
    folder = NAMED_MODELS[name]
    if not ((folder / "mask" / "config.json").is_file() and (folder / "patch" / "config.json").is_file()):
        raise InputError(f"the shipped model {name!r} is not in this installation ({folder} has no mask/ and patch/ runs)")
    return folder


def resolve_model_dirs(model: Sequence[str | os.PathLike] | str | os.PathLike) -> tuple[Path, Path | None]:
    """Turn ``--model`` values into (mask run, patch run).

    A name of :data:`NAMED_MODELS` (``"toy"``, ``"consep-cpu"``) gives the shipped mask and patch
    models; otherwise one or two run directories, told apart by
    the ``kind`` in their config. A single patch run is allowed (masks then come from a store).

    Raises:
        InputError: a directory without a checkpoint, two runs of one kind, or more than two.
    """
    values = [model] if isinstance(model, (str, os.PathLike)) else list(model)
    if len(values) == 1 and (named := named_model_dir(str(values[0]))) is not None:
        return named / "mask", named / "patch"
    if not 1 <= len(values) <= 2:
        raise InputError(f"`model` takes a shipped model ({', '.join(NAMED_MODELS)}) or one or two run directories "
                         f"(mask, patch), got {len(values)}")
    found: dict[str, Path] = {}
    for value in values:
        path = Path(value)
        ckpt = resolve_checkpoint(path)
        config_path = ckpt / "config.json"
        if not config_path.is_file():
            raise InputError(f"{path}: checkpoint {ckpt.name} has no config.json")
        kind = TrainConfig.load(config_path).kind
        if kind in found:
            raise InputError(f"{path}: both `model` runs are {kind} models; give one mask and one patch run")
        found[kind] = path
    if "patch" not in found:
        raise InputError(f"`model` needs a patch run; got only a {', '.join(found)} run")
    return found.get("mask"), found["patch"]


def load_model_run(run: str | os.PathLike, kind: str, ema: bool,
                   device: torch.device) -> tuple[torch.nn.Module, TrainConfig]:
    """The network of a ``kind`` (``"mask"`` or ``"patch"``) run, rebuilt from its config, and the config.

    Raises:
        InputError: no such run directory, or a run of the other kind.
    """
    path = Path(run)
    if not path.exists():
        raise InputError(f"{path}: no such model run directory")
    model, config = load_checkpoint(path, ema=ema, device=device)
    if config.kind != kind:
        raise InputError(f"{path}: expected a {kind} model run, found a {config.kind} model")
    return model, config


def model_weights_hash(mask_run: str | os.PathLike | None, patch_run: str | os.PathLike | None,
                       ema: bool = True) -> str:
    """The ``model_hash`` a generator loaded from these runs records (a hash of its weight files),
    computed without building the networks."""
    if mask_run is not None and (named := named_model_dir(str(mask_run))) is not None:
        mask_run, patch_run = named / "mask", named / "patch"
    name = "ema.safetensors" if ema else "model.safetensors"
    runs = [r for r in (mask_run, patch_run) if r is not None]
    files = [resolve_checkpoint(Path(r)) / name for r in runs]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise InputError(f"{missing[0]}: no such weights file")
    return file_digest(*files)
