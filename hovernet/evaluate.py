"""HoVerNet inference and evaluation: load a run, predict instances and types (Graham et al., 2019),
score them with the NASDM paper's metrics, and draw predictions over the images. The test sets
they are scored on are opened and checked in ``hovernet/eval_data.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nasdm_aug.training.checkpoint import check_weights_fit, read_safetensors, safetensors_header
from nasdm_aug.training.distributed import pick_device
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from hovernet.config import HoVerNetConfig
from hovernet.metrics import HoVerNetMetrics
from hovernet.model import HoVerNet
from hovernet.postprocess import postprocess
from hovernet.targets import as_label_map
from nasdm_aug.types import NucleiTypeTable
from nasdm_aug.utils import InputError, atomic_output, json_safe

__all__ = ["resolve_model_dir", "load_hovernet", "predict_batch", "evaluate_model", "evaluate", "predict_image"]


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The checkpoint directory a run or checkpoint path stands for: the best one, else the latest.

    Raises:
        InputError: no checkpoint found under ``path``.
    """
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    best = path / "best.json"
    if best.is_file():
        return path / json.loads(best.read_text())["path"]
    ckpts = sorted((path / "checkpoints").glob("epoch_*[0-9]"))
    if not ckpts:
        raise InputError(f"{path}: no HoVerNet checkpoint (expected best.json, checkpoints/epoch_*/ or model.safetensors)")
    return ckpts[-1]


def load_hovernet(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[HoVerNet, HoVerNetConfig, dict[str, Any]]:
    """Rebuild a trained HoVerNet from its own config and weights (nothing is unpickled), on
    ``device`` (``"auto"``: this rank's GPU when there is one, else the CPU).

    Returns:
        (model in eval mode, its HoVerNetConfig, data info dict with ``type_table`` and ``patch_size``).
    """
    ckpt = resolve_model_dir(path)
    cfg = HoVerNetConfig.load(ckpt / "config.json")
    info = json.loads((ckpt / "data.json").read_text()) if (ckpt / "data.json").is_file() else {}
    weights = ckpt / "model.safetensors"
    header = safetensors_header(weights)
    try:
        with torch.device("meta"):  # checked against the file before anything is allocated
            check_weights_fit(HoVerNet(cfg.model.replace(encoder_weights=None)), header, weights)
    except InputError:
        raise
    except (ValueError, TypeError) as exc:
        raise InputError(f"{ckpt / 'config.json'}: the model it describes cannot be built ({exc})") from None
    model = HoVerNet(cfg.model.replace(encoder_weights=None))  # trained weights replace the encoder's anyway
    try:
        model.load_state_dict(read_safetensors(weights, header_checked=True))
    except RuntimeError as exc:
        raise InputError(f"{ckpt}: weights do not load ({str(exc).splitlines()[0]})") from None
    return model.to(pick_device(device)).eval(), cfg, info


def type_table_of(info: dict[str, Any], n_types: int) -> NucleiTypeTable:
    """The run's type table, or a grey placeholder table when the run recorded none."""
    if info.get("type_table"):
        return NucleiTypeTable.from_json(info["type_table"])
    return NucleiTypeTable("unnamed", tuple(f"type_{k}" for k in range(1, n_types + 1)), ((200, 200, 200),) * n_types)


@torch.no_grad()
def predict_batch(model: HoVerNet, images: torch.Tensor, cfg: HoVerNetConfig) -> tuple[np.ndarray, np.ndarray]:
    """Instances and types for images [N, 3, H, W] in [0, 1] (H, W multiples of 32).

    Returns:
        (inst int32 [N, H, W], type uint8 [N, H, W]).
    """
    device = next(model.parameters()).device
    out = model(images.to(device, torch.float32))
    return postprocess(out, cfg.postprocess)


class _EvalItems(Dataset):
    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.base[i]
        return {"image": torch.as_tensor(np.asarray(item["image"]), dtype=torch.float32),
                "inst": torch.as_tensor(as_label_map(item["inst"], "inst")),
                "type": torch.as_tensor(as_label_map(item["type"], "type"))}


def evaluate_model(model: HoVerNet, data: Dataset, cfg: HoVerNetConfig, type_names: list[str] | None = None, *,
                   batch_size: int = 8, num_workers: int = 0, n_keep: int = 0,
                   progress: bool = True) -> tuple[dict[str, Any], list[dict[str, np.ndarray]]]:
    """Score a model on a dataset of MONAI dicts (``image`` [3, H, W] in [0, 1], ``inst``, ``type``).

    Returns:
        (metrics dict of :meth:`HoVerNetMetrics.aggregate`, the first ``n_keep`` patches as dicts
        of ``image`` uint8 [H, W, 3], ``inst``, ``type``, ``pred_inst``, ``pred_type``).
    """
    acc = HoVerNetMetrics(cfg.model.n_types, type_names)
    kept: list[dict[str, np.ndarray]] = []
    loader = DataLoader(_EvalItems(data), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = model.training
    model.eval()
    for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        p_inst, p_type = predict_batch(model, batch["image"], cfg)
        acc.update(p_inst, p_type, batch["inst"].numpy(), batch["type"].numpy())
        for k in range(min(n_keep - len(kept), len(p_inst))):
            kept.append({"image": (batch["image"][k].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8),
                         "inst": batch["inst"][k].numpy(), "type": batch["type"][k].numpy(),
                         "pred_inst": p_inst[k], "pred_type": p_type[k]})
    model.train(was_training)
    return acc.aggregate(), kept


def save_overlays(kept: list[dict[str, np.ndarray]], table: NucleiTypeTable, path: str | os.PathLike) -> Path:
    """Contact sheet: image, ground truth outlines, predicted outlines, one row per patch (PNG)."""
    from nasdm_aug.viz import contact_sheet, overlay_mask

    rows = [[k["image"], overlay_mask(k["image"], k["inst"], k["type"], table),
             overlay_mask(k["image"], k["pred_inst"], k["pred_type"], table)] for k in kept]
    return contact_sheet(rows, path, column_titles=["image", "ground truth", "prediction"])


def evaluate(model_dir: str | os.PathLike, data: Dataset, out_dir: str | os.PathLike, *, n_overlay: int = 8,
             batch_size: int = 8, device: str = "cpu", overwrite: bool = False, progress: bool = True,
             data_desc: str = "", postprocess: str | None = None) -> dict[str, Any]:
    """Evaluate a trained run; writes ``metrics.json`` and ``overlay.png`` into ``out_dir`` atomically.

    Args:
        postprocess: a ``POSTPROCESS_PRESETS`` name in place of the run's own post-processing.

    Returns:
        the metrics dict (``nan`` written as JSON null), with the post-processing used.
    """
    from hovernet.config import PostprocessConfig

    model, cfg, info = load_hovernet(model_dir, device)
    if postprocess:
        cfg = cfg.replace(postprocess=PostprocessConfig.preset(postprocess))
    table = type_table_of(info, cfg.model.n_types)
    metrics, kept = evaluate_model(model, data, cfg, list(table.names), batch_size=batch_size,
                                   n_keep=n_overlay, progress=progress)
    result = {"model": str(resolve_model_dir(model_dir)), "data": data_desc,
              "postprocess": {"preset": postprocess or "the run's", **cfg.postprocess.to_dict()}, **json_safe(metrics)}
    with atomic_output(out_dir, overwrite=overwrite) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        if kept:
            save_overlays(kept, table, tmp / "overlay.png")
    return result


@torch.no_grad()
def predict_image(model_dir: str | os.PathLike, image: np.ndarray, device: str = "cpu") -> dict[str, np.ndarray]:
    """Predict a whole RGB image of any size by sliding windows of the training patch size.

    Args:
        image: uint8 [H, W, 3].

    Returns:
        dict with ``inst`` int32 [H, W], ``type`` uint8 [H, W] and ``overlay`` uint8 [H, W, 3].
    """
    from monai.inferers import sliding_window_inference

    from nasdm_aug.viz import overlay_mask

    model, cfg, info = load_hovernet(model_dir, device)
    size = int(info.get("patch_size", 128))
    size = max(32, size // 32 * 32)
    x = torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1)[None] / 255.0
    h, w = x.shape[-2:]
    # pad to a multiple of 32 so every window fits the encoder's five halvings
    ph, pw = (-h) % 32, (-w) % 32
    x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
    x = x.to(next(model.parameters()).device)
    out = sliding_window_inference(x, (min(size, x.shape[-2]), min(size, x.shape[-1])), 4, model,
                                   overlap=0.25, mode="gaussian")
    out = {k: v[..., :h, :w] for k, v in out.items()}  # type: ignore[union-attr]
    inst, typ = postprocess(out, cfg.postprocess)
    table = type_table_of(info, cfg.model.n_types)
    return {"inst": inst[0], "type": typ[0], "overlay": overlay_mask(image, inst[0], typ[0], table)}
