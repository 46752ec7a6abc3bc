"""NASDM run directories and checkpoints: config.json + safetensors weights (raw and EMA) + a
weights-only trainer state, written atomically (docs/architecture.md, Contracts).

Run directory layout (what ``NASDMGenerator.from_pretrained(mask_run, patch_run)`` loads)::

    RUN_DIR/
      config.json              the resolved TrainConfig (kind, model, diffusion, optimisation)
      data.json                the training data: store path, split, n_items, patch_size, type_table
                               (the table as NucleiTypeTable.to_json text; ``load_type_table`` rebuilds it)
      log.jsonl                one JSON line per log interval (loss, mse, vb, per-quartile terms, lr, it/s)
      samples/step_XXXXXXXX.png   sample grids (EMA weights)
      checkpoints/step_XXXXXXXX/  one directory per kept checkpoint; the highest step is the latest
        config.json, data.json    copies, so a checkpoint directory stands alone
        model.safetensors         raw weights (state dict of the unwrapped model)
        ema.safetensors           EMA weights (same keys)
        trainer_state.pt          step, optimizer state, RNG states, timestep-sampler state;
                                  tensors and plain containers only, read with weights_only=True

A checkpoint directory appears only complete: it is written as ``step_X.partial`` and renamed.
Models are rebuilt from ``config.json`` with ``nets.build_model``; nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from nasdm_aug.types import NucleiTypeTable
from nasdm_aug.utils import InputError, atomic_output

from .config import TrainConfig

__all__ = [
    "CHECKPOINTS",
    "checkpoint_name",
    "write_checkpoint",
    "save_checkpoint",
    "list_checkpoints",
    "latest_checkpoint",
    "resolve_checkpoint",
    "load_weights",
    "load_trainer_state",
    "load_optimizer_state",
    "safetensors_header",
    "check_weights_fit",
    "read_safetensors",
    "read_torch_state",
    "load_checkpoint",
    "load_data_info",
    "load_type_table",
    "prune_checkpoints",
]

CHECKPOINTS = "checkpoints"
# checkpoint folders are named <unit>_<index>, zero-padded so they sort: the NASDM trainer counts
# steps, the HoVerNet trainer epochs
_DIGITS = {"step": 8, "epoch": 4}


def checkpoint_name(index: int, unit: str = "step") -> str:
    """``step_00000012`` / ``epoch_0003``: the folder of checkpoint ``index``."""
    return f"{unit}_{index:0{_DIGITS[unit]}d}"


def _state_to_cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # contiguous(): channels_last weights must be stored in the standard layout safetensors expects
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def write_checkpoint(
    run_dir: str | os.PathLike,
    index: int,
    *,
    weights: dict[str, dict[str, torch.Tensor]],
    trainer_state: dict[str, Any],
    config: Any,
    data_info: dict[str, Any],
    unit: str = "step",
) -> Path:
    """Write ``RUN_DIR/checkpoints/<unit>_<index>`` atomically: ``<name>.safetensors`` for each
    entry of ``weights``, ``trainer_state.pt`` (tensors and plain containers only, read back with
    ``weights_only=True``), and copies of ``config.json`` and ``data.json``.

    Returns:
        The checkpoint directory.
    """
    final = Path(run_dir) / CHECKPOINTS / checkpoint_name(index, unit)
    with atomic_output(final, overwrite=True) as tmp:
        tmp.mkdir(parents=True)
        config.save(tmp / "config.json")
        (tmp / "data.json").write_text(json.dumps(data_info, indent=2, sort_keys=True) + "\n")
        for name, state in weights.items():
            save_file(_state_to_cpu(state), str(tmp / f"{name}.safetensors"), metadata={unit: str(index)})
        torch.save(trainer_state, tmp / "trainer_state.pt")
    return final


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor],
    trainer_state: dict[str, Any],
    config: TrainConfig,
    data_info: dict[str, Any],
    keep_every: int = 0,
) -> Path:
    """Write a NASDM checkpoint ``RUN_DIR/checkpoints/step_XXXXXXXX`` (raw and EMA weights), then
    prune older ones.

    Args:
        run_dir: the run directory.
        step: number of optimisation steps done.
        model_state: raw weights (state dict of the unwrapped model).
        ema_state: EMA weights, same keys.
        trainer_state: tensors and plain containers only (read back with ``weights_only=True``).
        config: the run's config.
        data_info: JSON-able description of the training data.
        keep_every: also keep checkpoints whose step is a multiple of this (0: latest only).

    Returns:
        The checkpoint directory.
    """
    final = write_checkpoint(run_dir, step, weights={"model": model_state, "ema": ema_state},
                             trainer_state=trainer_state, config=config, data_info=data_info)
    prune_checkpoints(run_dir, keep_every)
    return final


def list_checkpoints(run_dir: str | os.PathLike, unit: str = "step") -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (index, directory), by increasing index."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    pattern = re.compile(rf"^{unit}_(\d+)$")
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := pattern.match(p.name))]
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike, unit: str = "step") -> Path | None:
    """The checkpoint with the highest index, or None when the run has none."""
    found = list_checkpoints(run_dir, unit)
    return found[-1][1] if found else None


def prune_checkpoints(run_dir: str | os.PathLike, keep_every: int = 0, keep: Sequence[int] = (),
                      unit: str = "step") -> None:
    """Delete all but the latest checkpoint, keeping indices that are multiples of ``keep_every``
    and those in ``keep`` (the HoVerNet trainer keeps its best epoch)."""
    found = list_checkpoints(run_dir, unit)
    for index, path in found[:-1]:
        if (keep_every > 0 and index % keep_every == 0) or index in keep:
            continue
        shutil.rmtree(path, ignore_errors=True)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory from either a run directory (its latest) or a checkpoint directory.

    Raises:
        InputError: no checkpoint there.
    """
    path = Path(path)
    # a checkpoint directory holds config.json and weights; a shipped model may hold only the EMA ones
    if (path / "config.json").is_file() and any((path / f).is_file() for f in ("model.safetensors", "ema.safetensors")):
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise InputError(f"{path}: no NASDM checkpoint here (expected {CHECKPOINTS}/step_*/ or model.safetensors)")
    return latest


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                       torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}


def safetensors_header(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The tensor table of a safetensors file (name -> ``{"dtype": "F32", "shape": [...]}``), read
    with ``safetensors.safe_open``, which maps the file and checks its header against its size
    without reading any tensor: a truncated or foreign file is one line here instead of a
    deserialisation traceback, and nothing is allocated.

    Raises:
        InputError: a missing, truncated or damaged file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: weights file missing")
    table = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                tensor = f.get_slice(name)
                table[name] = {"dtype": tensor.get_dtype(), "shape": list(tensor.get_shape())}
    except Exception as exc:  # noqa: BLE001  SafetensorError and OSError alike
        raise _unreadable(path, exc) from None
    return table


def _unreadable(path: Path, exc: Exception) -> InputError:
    """One line for a file ``safe_open`` refuses, after the kind of damage its message names."""
    why = (str(exc).splitlines() or [type(exc).__name__])[0]
    size = path.stat().st_size if path.is_file() else 0
    if "header too small" in why or "header too large" in why or "invalid header length" in why:
        return InputError(f"{path}: not a safetensors file or truncated ({size} bytes)")
    if "file not fully covered" in why:  # the header describes more (or fewer) bytes than the file holds
        return InputError(f"{path}: truncated (or padded): the file's {size} bytes are not what its header describes")
    return InputError(f"{path}: damaged safetensors header ({why.removeprefix('Error while deserializing header: ')[:120]})")


def check_weights_fit(model: nn.Module, header: dict[str, dict[str, Any]], path: str | os.PathLike,
                      what: str = "config.json") -> None:
    """Refuse weights whose names or shapes differ from ``model``'s (best built on the meta
    device, so that a config describing a huge network costs nothing before this check).

    Raises:
        InputError: the first missing, unexpected or differently shaped tensor.
    """
    state = model.state_dict()
    missing, extra = sorted(set(state) - set(header)), sorted(set(header) - set(state))
    if missing or extra:
        name = (missing or extra)[0]
        raise InputError(f"{path}: weights do not fit the model its {what} describes ({len(missing)} tensors missing, "
                         f"{len(extra)} unexpected, e.g. {name!r})")
    for name, tensor in state.items():
        if list(tensor.shape) != list(header[name]["shape"]):
            raise InputError(f"{path}: weights do not fit the model its {what} describes ({name!r} is "
                             f"{tuple(header[name]['shape'])} in the file, {tuple(tensor.shape)} in the model)")
        want = _SAFETENSORS_DTYPES.get(tensor.dtype)
        if want is not None and header[name].get("dtype") != want:
            raise InputError(f"{path}: {name!r} is {header[name].get('dtype')} in the file, the model needs {want}")


def read_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu",
                     header_checked: bool = False) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` after :func:`safetensors_header` (skipped when the caller
    has just read it), any failure one line."""
    if not header_checked:
        safetensors_header(path)
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:  # noqa: BLE001  SafetensorError and OSError alike
        raise InputError(f"{path}: cannot read the weights ({(str(exc).splitlines() or [type(exc).__name__])[0]})") from None


def load_weights(ckpt_dir: str | os.PathLike, ema: bool = True, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read ``ema.safetensors`` (or ``model.safetensors``) of a checkpoint directory.

    Raises:
        InputError: a missing, truncated or damaged file.
    """
    return read_safetensors(Path(ckpt_dir) / ("ema.safetensors" if ema else "model.safetensors"), device)


def read_torch_state(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(weights_only=True)``, a damaged or truncated file one line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: trainer state missing")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001  pickle, zip and EOF errors alike
        raise InputError(f"{path}: cannot read the trainer state, the file is damaged or truncated "
                         f"({(str(exc).splitlines() or [type(exc).__name__])[0][:120]})") from None


def load_trainer_state(ckpt_dir: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read ``trainer_state.pt`` with ``weights_only=True`` (tensors and plain containers only)."""
    return read_torch_state(Path(ckpt_dir) / "trainer_state.pt", device)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, then every per-parameter state tensor laid out as its
    parameter (channels_last or contiguous).

    Why: a state saved in one memory layout and loaded for parameters in the other keeps its saved
    strides, and PyTorch's fused Adam/AdamW then pairs the wrong elements (measured: weights off by
    0.15 after one step at lr 0.1, where the loop implementation is exact). A run may resume in
    another layout than it was saved in (a run from before layouts were chosen, or one whose
    layout was given anew).
    """
    optimizer.load_state_dict(state)
    for param, st in optimizer.state.items():
        for key, value in st.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                st[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def load_data_info(path: str | os.PathLike) -> dict[str, Any]:
    """``data.json`` of a run or checkpoint directory: store, split, n_items, patch_size, type_table."""
    ckpt = resolve_checkpoint(path)
    path = ckpt / "data.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: missing (every run records its training data there)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(info, dict) or not info.get("type_table"):
        raise InputError(f"{path}: no type_table (the nuclei types the model was trained with)")
    try:
        NucleiTypeTable.from_json(info["type_table"] if isinstance(info["type_table"], str)
                                  else json.dumps(info["type_table"]))
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"{path}: type_table is not a valid type table ({exc})") from None
    return info


def load_type_table(path: str | os.PathLike) -> NucleiTypeTable:
    """The nuclei type table a run (or checkpoint) was trained with, from its ``data.json``."""
    table = load_data_info(path)["type_table"]
    return NucleiTypeTable.from_json(table if isinstance(table, str) else json.dumps(table))


def load_checkpoint(
    path: str | os.PathLike, ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[nn.Module, TrainConfig]:
    """Rebuild a trained NASDM model from its run (or checkpoint) directory.

    The model is built by ``nasdm_aug.nets.build_model(config.model)`` from the checkpoint's own
    ``config.json``, then its safetensors weights are loaded strictly.

    Args:
        path: a run directory (its latest checkpoint is used) or one ``checkpoints/step_*`` directory.
        ema: load the EMA weights (the ones to sample with) rather than the raw ones.
        device: where the model goes.

    Returns:
        (model in eval mode on ``device``, its TrainConfig).

    Raises:
        InputError: no checkpoint, or an unreadable / incompatible config or weights file.
    """
    from nasdm_aug.nets import build_model

    ckpt = resolve_checkpoint(path)
    config = TrainConfig.load(ckpt / "config.json")
    weights = ckpt / ("ema.safetensors" if ema else "model.safetensors")
    header = safetensors_header(weights)
    try:
        with torch.device("meta"):  # the config is checked against the file before anything is allocated
            check_weights_fit(build_model(config.model), header, weights)
    except InputError:
        raise
    except (ValueError, TypeError) as exc:
        raise InputError(f"{ckpt / 'config.json'}: the model it describes cannot be built ({exc})") from None
    model = build_model(config.model)
    try:
        model.load_state_dict(read_safetensors(weights, header_checked=True), strict=True)
    except RuntimeError as exc:
        raise InputError(f"{ckpt}: weights do not fit the model its config.json describes ({exc})") from None
    return model.to(device).eval(), config
