"""``train()``: one NASDM training run from a PatchStore split to a run directory (Shrivastava &
Fletcher 2023, 4.1), on one process or under torchrun; what ``nasdm-aug train`` calls."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from nasdm_aug.data.store import PatchStore
from nasdm_aug.utils import InputError

from .checkpoint import latest_checkpoint, load_trainer_state
from .config import TrainConfig
from .data import NASDMDataset, x_channels
from .distributed import DistInfo, cleanup_distributed, init_distributed
from .preview import SamplePreview
from .run_dir import drop_replaced, prepare_run_dir, restore_replaced, resumed_config, write_run_record
from .trainer import Trainer

__all__ = ["train", "resolve_run_config", "check_model_fits", "run_config_from_options", "check_resumable"]


def resolve_run_config(out_dir: str | os.PathLike, config: TrainConfig | None, resume: bool, steps: int | None = None) -> TrainConfig:
    """The config a run uses: on resume the run's own ``config.json`` (only ``steps`` and ``layout`` may
    change).

    Raises:
        InputError: nothing to resume, no config given, or a config that differs from the run's.
    """
    config = resumed_config(out_dir, config, TrainConfig, resume, may_change=("steps", "layout"))
    return config.replace(steps=steps) if steps is not None else config


def run_config_from_options(kind: str, store: str | os.PathLike, out_dir: str | os.PathLike, *, preset: str = "tiny",
                            config: str | os.PathLike | None = None, resume: bool = False, steps: int | None = None,
                            seed: int | None = None, layout: str | None = None, precision: str | None = None,
                            loss_weighting: str | None = None, input_condition: str | None = None,
                            mean_type: str | None = None, schedule: str | None = None,
                            gap_weight: float | None = None, gap_sigma: float | None = None,
                            drop_unannotated: int | None = None) -> TrainConfig:
    """The config ``nasdm-aug train`` runs: ``config`` (a JSON file), else on ``resume`` the run's
    own ``config.json``, else the ``preset`` made for the store's types and patch size; with the
    options given (not None) in its place, then resolved against the run in ``out_dir``
    (:func:`resolve_run_config`). ``seed`` is set before the resolving, so a resume cannot change
    it silently.

    Raises:
        InputError: a config of the other ``kind``, a preset that does not fit the store, an
            ``input_condition`` for the mask model, a ``gap_weight`` for the patch model, or a config
            the run in ``out_dir`` refuses.
    """
    from .config import get_train_preset

    out = Path(out_dir)
    if config is not None:
        cfg = TrainConfig.load(config)
        if cfg.kind != kind:
            raise InputError(f"{config}: config is for the {cfg.kind!r} model, not {kind!r}")
    elif resume and (out / "config.json").is_file():
        cfg = TrainConfig.load(out / "config.json")  # the run's own config
    else:  # a preset is a recipe: the data fixes the number of types and the patch size
        with PatchStore(store) as data:
            try:
                cfg = get_train_preset(kind, preset, n_types=data.type_table.n_types, image_size=data.patch_size)
            except ValueError as exc:
                raise InputError(f"preset {preset!r} does not fit {store} ({data.patch_size}-px patches): {exc}") from None
    changes = {k: v for k, v in (("seed", seed), ("layout", layout), ("precision", precision),
                                 ("gap_weight", gap_weight), ("gap_sigma", gap_sigma),
                                 ("drop_unannotated", drop_unannotated)) if v is not None}
    if cfg.kind != "mask" and (gap_weight or 0) > 0:
        raise InputError(f"`gap_weight` {gap_weight} weighs the mask model's loss; the patch model takes none")
    diffusion = {k: v for k, v in (("loss_weighting", loss_weighting), ("mean_type", mean_type),
                                   ("schedule", schedule)) if v is not None}
    if diffusion:
        changes["diffusion"] = cfg.diffusion.replace(**diffusion)
    if input_condition is not None:
        if cfg.kind != "patch" and input_condition != "none":
            raise InputError(f"`input_condition` {input_condition} is for the patch model; the mask model's "
                             "condition is a type-presence vector")
        changes["model"] = cfg.model.replace(input_condition=input_condition)
    return resolve_run_config(out, cfg.replace(**changes) if changes else cfg, resume, steps)


def check_resumable(out_dir: str | os.PathLike) -> bool:
    """Whether the run in ``out_dir`` has a checkpoint to resume from (False: it has a config but
    no checkpoint yet, and a resume starts it again from step 0 with that config).

    Raises:
        InputError: ``out_dir`` holds no run.
    """
    out = Path(out_dir)
    has_checkpoint = out.is_dir() and latest_checkpoint(out) is not None
    if not (out / "config.json").is_file() and not has_checkpoint:
        raise InputError(f"{out}: nothing to resume (no run there); drop `resume` to start a new run")
    return has_checkpoint


def check_model_fits(config: TrainConfig, n_types: int, patch_size: int, learns_sigma: bool) -> None:
    """Check the model config against the store's types and patch size and the process's outputs.

    Raises:
        InputError: a field that does not fit (names the field and both values).
    """
    m = config.model
    want_in = x_channels(config.kind, n_types)
    wants = {
        "n_types": n_types,
        "image_size": patch_size,
        "in_channels": want_in,
        "out_channels": want_in * (2 if learns_sigma else 1),
    }
    for name, want in wants.items():
        if getattr(m, name) != want:
            raise InputError(
                f"model.{name} is {getattr(m, name)} but the data and diffusion need {want} "
                f"({config.kind} model, {n_types} nuclei types, {patch_size}-px patches, var_type={config.diffusion.var_type!r})"
            )


def _preview(dataset: NASDMDataset, diffusion: Any, config: TrainConfig, out: Path, store: PatchStore) -> SamplePreview:
    k = min(config.sample_count, len(dataset))
    items = [dataset[i] for i in range(k)]  # the first patches of the split, fixed for the whole run
    return SamplePreview(
        diffusion,
        config.kind,
        torch.stack([it["cond"] for it in items]),
        torch.stack([it["x"] for it in items]),
        store.type_table,
        out,
        steps=config.sample_steps,
        sampler=config.sample_sampler,
        seed=config.seed,
    )


def train(
    kind: str,
    store_path: str | os.PathLike,
    split: str | None,
    config: TrainConfig | None,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    steps: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Path:
    """Train the ``kind`` model on a PatchStore split into ``out_dir`` (layout: ``checkpoint.py``).

    Under torchrun each rank calls this; rank 0 writes the run directory.

    Args:
        kind: ``"mask"`` or ``"patch"``.
        store_path: the PatchStore ``.h5``.
        split: split to train on (``"Train"``), or None for every patch.
        config: the run config; may be None with ``resume`` (the run's own is used).
        out_dir: the run directory.
        resume: continue from the latest checkpoint in ``out_dir`` (fresh when it has none).
        overwrite: replace an existing run instead of refusing; the old run waits in
            ``OUT.replaced`` until the new one has written its first checkpoint.
        steps: override ``config.steps`` (e.g. to extend a finished run).
        device: ``None``/``"auto"`` picks this rank's GPU, else CPU.
        progress: tqdm bar on rank 0.

    Returns:
        The run directory.

    Raises:
        InputError: bad store/split, a model that does not fit the data, or an existing run.
        NonFiniteLossError: the loss diverged (the last good checkpoint stays).
    """
    out = Path(out_dir)
    config = resolve_run_config(out, config, resume, steps)
    if config.kind != kind:
        raise InputError(f"config is for the {config.kind!r} model, but {kind!r} was asked for")
    started = not torch.distributed.is_initialized()
    dist = init_distributed(device)
    try:
        trainer = _prepare_trainer(kind, store_path, split, config, out, resume=resume, overwrite=overwrite,
                                   dist=dist, progress=progress)
        try:
            trainer.run()
        except BaseException:
            if dist.is_main:
                restore_replaced(out)
            raise
        if dist.is_main:
            drop_replaced(out)
        return out
    finally:
        if started:
            cleanup_distributed()


def _prepare_trainer(kind: str, store_path: str | os.PathLike, split: str | None, config: TrainConfig, out: Path, *,
                     resume: bool, overwrite: bool, dist: DistInfo, progress: bool) -> Trainer:
    """Everything :func:`train` does before the first step, on every rank: the data, diffusion and
    model, checked against each other; the run directory (rank 0 writes it and the run record);
    and the Trainer, restored from the latest checkpoint on ``resume``."""
    store = PatchStore(store_path)
    dataset = NASDMDataset(store, kind, split, gap_weight=config.gap_weight, gap_sigma=config.gap_sigma,
                           drop_unannotated=config.drop_unannotated)
    diffusion = config.diffusion.build()
    check_model_fits(config, store.type_table.n_types, store.patch_size, diffusion.learns_sigma)
    prepare_run_dir(out, resume, overwrite, dist.is_main)
    from nasdm_aug.nets import build_model

    torch.manual_seed(config.seed)  # identical initial weights on every rank (DDP also broadcasts)
    model = build_model(config.model)
    data_info = _data_info(store, store_path, split, len(dataset), out, resume)
    if config.drop_unannotated:  # the record says what was left out, and by what measure
        data_info.update(dropped_unannotated=dataset.dropped, blob_threshold=round(dataset.blob_threshold, 6))
    ckpt = latest_checkpoint(out) if resume else None
    trainer = Trainer(
        model, diffusion, dataset, config, out, data_info=data_info,
        preview=_preview(dataset, diffusion, config, out, store) if dist.is_main and config.sample_every else None,
        dist=dist, progress=progress,
        layout=load_trainer_state(ckpt).get("layout") if ckpt is not None else None,  # a run keeps its layout
    )
    if ckpt is not None:
        trainer.load(ckpt)
    if dist.is_main:
        write_run_record(out, config, data_info)
        trainer.after_checkpoint = lambda: drop_replaced(out)
    return trainer


def _data_info(store: PatchStore, store_path: str | os.PathLike, split: str | None, n_items: int, out: Path,
               resume: bool) -> dict[str, Any]:
    """The run's ``data.json``: the store, split and scale it trains on. A resumed run's own record
    must name the same scale and patches (and gives the magnification a store does not record).

    Raises:
        InputError: a resumed run whose store is at another scale or holds other patches.
    """
    data_info = {
        "store": str(Path(store_path).resolve()),
        "split": split,
        "n_items": n_items,
        "patch_size": store.patch_size,
        "magnification": store.magnification,  # None for stores that do not record it
        "type_table": store.type_table.to_json(),  # NucleiTypeTable.to_json text
        "split_digest": store.content_digest(split),  # a resume must see the same patches
    }
    if resume and (out / "data.json").is_file():  # a resumed run keeps the scale it started at
        from nasdm_aug.data.magnification import check_same_scale

        saved_info = json.loads((out / "data.json").read_text())
        check_same_scale(f"run {out}", saved_info, f"store {store_path}", store.scale_info())
        saved_digest = saved_info.get("split_digest")  # runs from before it was recorded are trusted
        if saved_digest and saved_digest != data_info["split_digest"]:
            raise InputError(f"{out} was trained on {saved_info.get('store')} split {saved_info.get('split')!r} "
                             f"(digest {saved_digest}); {store_path} split {split!r} holds other patches "
                             f"({data_info['split_digest']}): resume with that store, or start a new run")
        if data_info["magnification"] is None:  # a store that does not record it keeps the run's
            data_info["magnification"] = saved_info.get("magnification")
    return data_info
