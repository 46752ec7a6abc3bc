"""HoVerNet trainer with the NASDM paper's recipe (Sec. 4.3.2, after Graham et al., 2019): phase 1
trains the decoders on a frozen encoder, phase 2 all layers; Adam with a step decay per phase;
the checkpoint with the best validation Dice is kept. Resumable, and DDP under torchrun.

Run directory::

    OUT/config.json, data.json     the resolved TrainConfig; type table, patch size, data description
    OUT/log.jsonl                  one line per epoch: loss terms, lr, phase, validation metrics
    OUT/best.json                  {"epoch", "dice", "path"} of the best validation checkpoint
    OUT/checkpoints/epoch_XXXX/    config.json, data.json, model.safetensors, trainer_state.pt
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from hovernet.config import TrainConfig
from hovernet.data import HoVerNetTrainDataset
from hovernet.evaluate import evaluate_model
from hovernet.losses import HoVerNetLoss
from hovernet.model import HoVerNet
from nasdm_aug.training.checkpoint import read_safetensors, read_torch_state
from nasdm_aug.training.distributed import DistInfo, all_reduce_sum, barrier, cleanup_distributed, init_distributed
from nasdm_aug.types import NucleiTypeTable
from nasdm_aug.utils import InputError, atomic_output, write_text_atomic

__all__ = ["train_hovernet", "lr_at"]


def lr_at(cfg: TrainConfig, epoch: int) -> tuple[int, float]:
    """(phase, learning rate) of a 0-based epoch: each phase restarts at ``lr`` and decays once."""
    phase, in_phase = (1, epoch) if epoch < cfg.phase1_epochs else (2, epoch - cfg.phase1_epochs)
    return phase, cfg.lr if in_phase < cfg.lr_decay_epoch else cfg.lr_decayed


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def _start_run(out: Path, cfg: TrainConfig, info: dict[str, Any], resume: bool, overwrite: bool,
               main: bool) -> dict[str, Any] | None:
    """Check or create the run directory; return the latest trainer state when resuming."""
    ckpts = sorted((out / "checkpoints").glob("epoch_*[0-9]"))
    if resume and ckpts:
        saved = TrainConfig.load(out / "config.json")
        if saved != cfg:
            raise InputError(f"{out}/config.json differs from this run's config; resume with the same settings")
        state = read_torch_state(ckpts[-1] / "trainer_state.pt")
        state["weights"] = read_safetensors(ckpts[-1] / "model.safetensors")
        return state
    if out.exists() and any(out.iterdir()) and not (resume or overwrite):
        raise InputError(f"{out} is not empty; pass --resume to continue or --overwrite to start again")
    barrier()  # every rank has looked before rank 0 writes
    if main:
        if overwrite and out.exists() and not resume:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.json")
        _write_json(out / "data.json", info)
    barrier()
    return None


def _save(out: Path, model: HoVerNet, opt: torch.optim.Optimizer, state: dict[str, Any], cfg: TrainConfig,
          info: dict[str, Any]) -> Path:
    """Write checkpoints/epoch_XXXX atomically (a new name each time, so no moment without one)."""
    path = out / "checkpoints" / f"epoch_{state['epoch']:04d}"
    with atomic_output(path, overwrite=True) as tmp:
        tmp.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        torch.save({**state, "optimizer": opt.state_dict()}, tmp / "trainer_state.pt")
        cfg.save(tmp / "config.json")
        _write_json(tmp / "data.json", info)
    return path


def _prune(out: Path, keep: set[str]) -> None:
    ckpts = sorted((out / "checkpoints").glob("epoch_*[0-9]"))
    for p in ckpts[:-1]:
        if p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)


def _make_optimizer(model: HoVerNet, cfg: TrainConfig, phase: int) -> torch.optim.Optimizer:
    model.freeze_encoder(phase == 1)
    params = [p for p in model.parameters() if p.requires_grad]
    # the fused kernel updates all parameters in one pass: 1.2x the phase-2 step on a 2-core CPU
    # (benchmarks/RESULTS.md, HoVerNet); the same algorithm, equal to float rounding
    try:
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):  # a device or dtype without the fused kernel
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _train_epoch(net: torch.nn.Module, loader: DataLoader, opt: torch.optim.Optimizer, loss_fn: HoVerNetLoss,
                 dev: DistInfo, cfg: TrainConfig, epoch: int, progress: bool) -> dict[str, float]:
    """One pass over the loader; returns loss terms averaged over all samples of all ranks."""
    net.train()
    sums: dict[str, torch.Tensor] = {}
    n_seen = torch.zeros(1, dtype=torch.float64)
    autocast = torch.autocast(dev.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (progress and dev.is_main), leave=False)
    for batch in bar:
        batch = {k: v.to(dev.device, non_blocking=True) for k, v in batch.items()}
        with autocast:
            pred = net(batch["image"])
        terms = loss_fn(pred, batch)
        if not torch.isfinite(terms["loss"]):
            raise InputError(f"non-finite HoVerNet loss at epoch {epoch + 1}; lower the learning rate or check the data")
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        n = batch["image"].shape[0]
        for k, v in terms.items():
            sums[k] = sums.get(k, torch.zeros(1, dtype=torch.float64)) + float(v.detach()) * n
        n_seen += n
        bar.set_postfix(loss=f"{float(terms['loss'].detach()):.3f}")
    keys = sorted(sums)
    packed = all_reduce_sum(torch.cat([sums[k] for k in keys] + [n_seen]))
    return {k: float(packed[i] / packed[-1]) for i, k in enumerate(keys)}


def train_hovernet(train_data: Dataset, out_dir: str | os.PathLike, cfg: TrainConfig, *,
                   val_data: Dataset | None = None, type_table: NucleiTypeTable | None = None,
                   patch_size: int | None = None, magnification: float | None = None, data_desc: str = "",
                   resume: bool = False,
                   overwrite: bool = False, stop_after_epochs: int | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Train HoVerNet on a dataset of MONAI dicts and keep the best checkpoint by validation Dice.

    Args:
        train_data: items with ``image`` float [3, H, W] in [0, 1], ``inst``, ``type``.
        out_dir: the run directory (see the module docstring).
        cfg: the recipe; ``cfg.model.n_types`` is replaced by ``type_table.n_types`` when given.
        val_data: validation items of the same form, or None (then the last epoch is kept).
        type_table: the nuclei types (names and colours for reports).
        patch_size: the training patch size, recorded for whole-image prediction.
        magnification: the training data's objective power (recorded; evaluation data must match).
        data_desc: a description of the data recorded in ``data.json``.
        resume: continue from the latest checkpoint in ``out_dir``.
        overwrite: replace a non-empty ``out_dir``.
        stop_after_epochs: return after this many epochs of this call (time-boxed runs; resume later).
        progress: tqdm bars.

    Returns:
        dict with ``epochs_done``, ``best_epoch``, ``best_dice``, ``history`` and ``run_dir``
        (validation and best tracking happen on rank 0; other ranks return ``best_epoch`` -1).

    Raises:
        InputError: a non-empty run directory without resume/overwrite, a config that differs
            from the one being resumed, or a non-finite loss.
    """
    dev = init_distributed(cfg.device)
    if type_table is not None:
        cfg = cfg.replace(model=cfg.model.replace(n_types=type_table.n_types))
    info = {"type_table": type_table.to_json() if type_table else None, "patch_size": patch_size,
            "magnification": magnification, "data": data_desc, "n_train": len(train_data), "n_val": len(val_data) if val_data is not None else 0}
    out = Path(out_dir)
    try:
        state = _start_run(out, cfg, info, resume, overwrite, dev.is_main)
        return _run(train_data, val_data, out, cfg, info, dev, state, stop_after_epochs, progress, type_table)
    finally:
        cleanup_distributed()


def _run(train_data: Dataset, val_data: Dataset | None, out: Path, cfg: TrainConfig, info: dict[str, Any],
         dev: DistInfo, state: dict[str, Any] | None, stop_after: int | None, progress: bool,
         type_table: NucleiTypeTable | None) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = HoVerNet(cfg.model).to(dev.device)
    st = {"epoch": 0, "best_dice": -math.inf, "best_epoch": -1, "history": []}
    if state is not None:
        model.load_state_dict(state.pop("weights"))
        st.update({k: state[k] for k in st})
    ds = HoVerNetTrainDataset(train_data, cfg.augment, cfg.seed)
    sampler = DistributedSampler(ds, num_replicas=dev.world_size, rank=dev.rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        pin_memory=dev.device.type == "cuda")
    loss_fn = HoVerNetLoss(cfg.loss).to(dev.device)
    opt, net, cur_phase, done_here = None, model, 0, 0
    # the saved Adam state continues only within the phase it belongs to
    saved_opt = state["optimizer"] if state and lr_at(cfg, st["epoch"] - 1)[0] == lr_at(cfg, st["epoch"])[0] else None
    for epoch in range(st["epoch"], cfg.epochs):
        phase, lr = lr_at(cfg, epoch)
        if phase != cur_phase:  # a fresh Adam per phase, as HoVerNet; DDP re-wrapped for the new trainable set
            opt, cur_phase = _make_optimizer(model, cfg, phase), phase
            if saved_opt is not None:
                opt.load_state_dict(saved_opt)
                saved_opt = None
            net = DistributedDataParallel(model, device_ids=[dev.device] if dev.device.type == "cuda" else None) \
                if dev.enabled else model
        for g in opt.param_groups:  # type: ignore[union-attr]
            g["lr"] = lr
        ds.set_epoch(epoch)
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        record: dict[str, Any] = {"epoch": epoch + 1, "phase": phase, "lr": lr,
                                  **_train_epoch(net, loader, opt, loss_fn, dev, cfg, epoch, progress)}  # type: ignore[arg-type]
        record["patches_per_s"] = len(ds) / (time.perf_counter() - t0)
        if dev.is_main:
            _end_epoch(model, opt, st, record, epoch, cfg, val_data, out, info, type_table, progress)  # type: ignore[arg-type]
        barrier()
        done_here += 1
        st["epoch"] = epoch + 1
        if stop_after is not None and done_here >= stop_after:
            break
    return {"epochs_done": st["epoch"], "best_epoch": st["best_epoch"], "best_dice": st["best_dice"],
            "history": st["history"], "run_dir": str(out)}


def _end_epoch(model: HoVerNet, opt: torch.optim.Optimizer, st: dict[str, Any], record: dict[str, Any], epoch: int,
               cfg: TrainConfig, val_data: Dataset | None, out: Path, info: dict[str, Any],
               type_table: NucleiTypeTable | None, progress: bool) -> None:
    """Rank 0: validate when due, checkpoint, track the best, prune and log."""
    last = epoch + 1 == cfg.epochs
    if val_data is not None and ((epoch + 1) % cfg.val_every == 0 or last):
        names = list(type_table.names) if type_table else None
        metrics, _ = evaluate_model(model, val_data, cfg, names, batch_size=cfg.batch_size, progress=progress)
        record["val"] = {k: v for k, v in metrics.items() if k != "per_type"}
    dice = record.get("val", {}).get("dice", math.nan)
    # without validation the latest checkpoint is the best one
    better = (val_data is None) or (not math.isnan(dice) and dice > st["best_dice"])
    if better:
        st["best_dice"], st["best_epoch"] = (dice if val_data is not None else math.nan), epoch + 1
    # plain Python numbers only: the trainer state is read back with weights_only=True
    record = json.loads(json.dumps(record, default=lambda o: o.item()))
    st["history"] = st["history"] + [record]
    path = _save(out, model, opt, {**st, "epoch": epoch + 1}, cfg, info)
    if better:
        best_dice = st["best_dice"] if math.isfinite(st["best_dice"]) else None
        _write_json(out / "best.json", {"epoch": epoch + 1, "dice": best_dice, "path": f"checkpoints/{path.name}"})
    best_name = f"epoch_{st['best_epoch']:04d}"
    _prune(out, {best_name})
    write_text_atomic(out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in st["history"]))
