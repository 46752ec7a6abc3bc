"""HoVerNet inference and evaluation: load a run, predict instances and types (Graham et al., 2019),
score them with the NASDM paper's metrics, and draw predictions over the images.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from nasdm_aug.training.checkpoint import check_weights_fit, read_safetensors, safetensors_header
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from hovernet.config import TrainConfig
from hovernet.metrics import HoVerNetMetrics
from hovernet.model import HoVerNet
from hovernet.postprocess import postprocess
from hovernet.targets import as_label_map
from nasdm_aug.types import NucleiTypeTable
from nasdm_aug.utils import InputError, atomic_output, json_safe

__all__ = ["resolve_model_dir", "load_hovernet", "predict_batch", "evaluate_model", "evaluate", "predict_image",
           "parse_data_arg", "eval_split", "open_eval_store", "check_same_types", "count_split_units",
           "eval_prepare_config", "open_eval_data"]


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


def load_hovernet(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[HoVerNet, TrainConfig, dict[str, Any]]:
    """Rebuild a trained HoVerNet from its own config and weights (nothing is unpickled).

    Returns:
        (model in eval mode, its TrainConfig, data info dict with ``type_table`` and ``patch_size``).
    """
    ckpt = resolve_model_dir(path)
    cfg = TrainConfig.load(ckpt / "config.json")
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
    return model.to(device).eval(), cfg, info


def type_table_of(info: dict[str, Any], n_types: int) -> NucleiTypeTable:
    """The run's type table, or a grey placeholder table when the run recorded none."""
    if info.get("type_table"):
        return NucleiTypeTable.from_json(info["type_table"])
    return NucleiTypeTable("unnamed", tuple(f"type_{k}" for k in range(1, n_types + 1)), ((200, 200, 200),) * n_types)


@torch.no_grad()
def predict_batch(model: HoVerNet, images: torch.Tensor, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
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


def evaluate_model(model: HoVerNet, data: Dataset, cfg: TrainConfig, type_names: list[str] | None = None, *,
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
    out = sliding_window_inference(x.to(device), (min(size, x.shape[-2]), min(size, x.shape[-1])), 4, model,
                                   overlap=0.25, mode="gaussian")
    out = {k: v[..., :h, :w] for k, v in out.items()}  # type: ignore[union-attr]
    inst, typ = postprocess(out, cfg.postprocess)
    table = type_table_of(info, cfg.model.n_types)
    return {"inst": inst[0], "type": typ[0], "overlay": overlay_mask(image, inst[0], typ[0], table)}


# -- test sets: a PatchStore split or a dataset folder prepared at the model's scale -----------------
def parse_data_arg(arg: str | os.PathLike) -> tuple[Path, str | None, bool]:
    """``STORE.h5[:SPLIT]`` or ``DATASET_FOLDER`` as (path, split or None, is_folder).

    Raises:
        InputError: neither an existing store nor a folder, or a folder given a ``:SPLIT``.
    """
    from nasdm_aug.data.store import parse_store_arg

    arg = str(arg)
    if os.path.isdir(arg):
        return Path(arg), None, True
    path, split = parse_store_arg(arg, None)
    if os.path.isdir(path):
        raise InputError(f"{arg}: {path} is a dataset folder; it takes no :SPLIT (all its images are the test set)")
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such test store (STORE.h5[:SPLIT]) or dataset folder")
    return Path(path), split, False


def eval_split(store, split: str | None) -> str | None:
    """The split of ``store`` to score: the one given, else the whole store (None) when it has at
    most one split, else ``Test``.

    Raises:
        InputError: an unknown split, or no split given and several without a ``Test`` one; the
            message names the store and its splits.
    """
    have = ", ".join(f"{k}={len(store.indices(k))}" for k in store.splits) or "none"
    if split is not None:
        if split not in store.splits:
            raise InputError(f"{store.path}: no split {split!r} (splits here: {have})")
        return split
    if len(store.splits) <= 1:
        return None
    if "Test" not in store.splits:
        raise InputError(f"{store.path}: no 'Test' split to default to (splits here: {have}); pass STORE:SPLIT")
    return "Test"


def open_eval_store(path: str | os.PathLike, split: str | None = None):
    """Open a test store and pick its split (see :func:`eval_split`).

    Returns:
        (PatchStore, split or None for the whole store, number of patches).

    Raises:
        InputError: not a PatchStore, an unknown split, or no patches in it.
    """
    from nasdm_aug.data.store import PatchStore

    store = PatchStore(path)
    split = eval_split(store, split)
    n = len(store) if split is None else len(store.indices(split))
    if n == 0:
        raise InputError(f"{store.path}: the test set ({'the whole store' if split is None else f'split {split!r}'}) "
                         "holds no patches")
    return store, split, n


def check_same_types(what: str, table: NucleiTypeTable, other: str, other_table: NucleiTypeTable) -> None:
    """Refuse to score ``what`` against ``other`` when their nuclei types differ (names, in order).

    Raises:
        InputError: one line naming both sides and both tables.
    """
    if tuple(table.names) != tuple(other_table.names):
        raise InputError(f"{what} has type table {table.name!r} ({', '.join(table.names)}) but {other} has "
                         f"{other_table.name!r} ({', '.join(other_table.names)})")


def count_split_units(fmt: str, folder: str | os.PathLike) -> int:
    """How many images a dataset folder holds, counted as the splits count them (CoNIC: source images).

    Raises:
        InputError: an unknown format, or a folder that does not read as ``fmt`` or holds no images.
    """
    from nasdm_aug.data.readers import get_reader

    try:
        spec = get_reader(fmt)
    except KeyError as exc:
        raise InputError(exc.args[0]) from None
    names = spec.list_names(folder)
    if not names:
        raise InputError(f"{folder}: empty dataset (no images)")
    return len({spec.group(n) for n in names})


_LIKE_KEYS = ("min_tissue", "tissue_threshold", "min_nucleus_area", "compression")


def eval_prepare_config(folder: str | os.PathLike, fmt: str, out: str | os.PathLike, *, patch_size: int,
                        stride: int, magnification: float = 0.0, consep_classes: str = "merged",
                        like: dict[str, Any] | None = None):
    """The PrepareConfig that makes a test set of a whole dataset folder: every image in ``Test``.

    Args:
        folder: the dataset folder (recorded resolved, so a rerun can tell it from another).
        fmt: its reader format.
        out: the store to write.
        patch_size, stride, magnification, consep_classes: as the data the model was trained on
            (magnification 0 = the source's own).
        like: a PrepareConfig dict to copy the tissue filter, ``min_nucleus_area``, compression and
            a forced type table from (the study store's).

    Raises:
        InputError: the folder does not read as ``fmt``, or the settings do not fit it (one line).
    """
    from nasdm_aug.data.prepare import PrepareConfig

    like = like or {}
    extra = {k: like[k] for k in _LIKE_KEYS if k in like}
    if like.get("type_table"):
        extra["type_table"] = like["type_table"]
    n = count_split_units(fmt, folder)
    try:
        return PrepareConfig(format=fmt, src=str(Path(folder).resolve()), out=str(out), patch_size=int(patch_size),
                             stride=int(stride), magnification=float(magnification or 0.0),
                             consep_classes=consep_classes, split_counts=(n, 0, 0), **extra)
    except ValueError as exc:
        raise InputError(f"{folder}: cannot prepare it as a {fmt} test set ({exc})") from None


@contextlib.contextmanager
def open_eval_data(data_arg: str | os.PathLike, model_dir: str | os.PathLike, *, fmt: str | None = None,
                   consep_classes: str | None = None, magnification: float | None = None,
                   progress: bool = False) -> Iterator[tuple[Dataset, str]]:
    """The test set ``hovernet evaluate --data`` names, checked against the model.

    ``STORE.h5[:SPLIT]`` is read as it is (split: see :func:`eval_split`). A dataset folder (with
    ``fmt``) is prepared into a temporary store, removed on exit, at the model's patch size (stride
    half of it) and at ``magnification``, else the one the model's ``data.json`` records, else the
    source's own; all its images form the test set.

    Yields:
        (dataset of MONAI dicts, a description for ``metrics.json``).

    Raises:
        InputError: an unreadable store or folder, a folder without ``fmt`` (or a store with it),
            or a test set whose type table or magnification differs from the model's.
    """
    from hovernet.data import store_dataset
    from nasdm_aug.data.magnification import check_same_scale

    path, split, is_folder = parse_data_arg(data_arg)
    ckpt = resolve_model_dir(model_dir)
    info = json.loads((ckpt / "data.json").read_text()) if (ckpt / "data.json").is_file() else {}
    model_what = f"model {model_dir}"
    model_table = NucleiTypeTable.from_json(info["type_table"]) if info.get("type_table") else None
    model_mag = info.get("magnification")
    if not is_folder:
        if fmt:
            raise InputError(f"--format {fmt} reads a dataset folder, but --data {data_arg} is a store")
        store, split, n = open_eval_store(path, split)
        if model_table is not None:
            check_same_types(f"test store {path}", store.type_table, model_what, model_table)
        check_same_scale(f"test store {path}", {"magnification": store.magnification}, model_what,
                         {"magnification": model_mag})
        store.close()
        ds = store_dataset(path, split)
        try:
            yield ds, f"{path}:{split}" if split else f"{path} (whole store)"
        finally:
            _close(ds)
        return
    from nasdm_aug.data.readers import READERS

    if not fmt:
        raise InputError(f"--data {path} is a dataset folder: pass --format ({', '.join(sorted(READERS))})")
    if not info.get("patch_size"):
        raise InputError(f"{ckpt}/data.json records no patch size: prepare {path} with `nasdm-aug prepare` "
                         "and pass the store as --data")
    if magnification and model_mag:
        check_same_scale(f"--magnification {magnification:g}", {"magnification": magnification}, model_what,
                         {"magnification": model_mag})
    mag = float(magnification or model_mag or 0.0)
    patch = int(info["patch_size"])
    with tempfile.TemporaryDirectory(prefix="nasdm-eval-") as tmp:
        from nasdm_aug.data.prepare import prepare

        want = eval_prepare_config(path, fmt, Path(tmp) / "test.h5", patch_size=patch, stride=max(1, patch // 2),
                                   magnification=mag, consep_classes=consep_classes or "merged")
        if model_table is not None:
            check_same_types(f"test folder {path} ({fmt})", want.table(), model_what, model_table)
        prepare(want, progress=progress)
        _, _, n = open_eval_store(want.out, "Test")
        ds = store_dataset(want.out, "Test")
        try:
            yield ds, (f"{path} ({fmt}, all {want.split_counts[0]} images as Test: {n} patches of {patch} px "
                       f"at {want.target():g}x)")
        finally:
            _close(ds)


def _close(ds: Any) -> None:
    for store in (getattr(ds, "real", None), getattr(ds, "bank", None)):
        if store is not None and hasattr(store, "close"):
            store.close()
