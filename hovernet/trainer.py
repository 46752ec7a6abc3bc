"""HoVerNet trainer with the NASDM paper's recipe (Sec. 4.3.2, after Graham et al., 2019): phase 1
trains the decoders on a frozen encoder, phase 2 all layers; Adam with a step decay per phase;
the checkpoint with the best validation Dice is kept. Resumable, and DDP under torchrun.

Run directory::

    OUT/config.json, data.json     the resolved HoVerNetConfig; type table, patch size, data description
    OUT/log.jsonl                  one line per epoch: loss terms, lr, phase, validation metrics
    OUT/best.json                  {"epoch", "dice", "path"} of the best validation checkpoint
    OUT/checkpoints/epoch_XXXX/    config.json, data.json, model.safetensors, trainer_state.pt

The run directory is handled as the NASDM trainer's is (``nasdm_aug.training.run_dir``,
``checkpoint``, ``metric_log``): refused without resume or overwrite, a replaced run kept until the
new one has a checkpoint, resumed only with the same config (the ``layout`` may change), checkpoints
written atomically and pruned to the latest and the best, the log truncated to the resumed epoch.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from hovernet.config import HoVerNetConfig
from hovernet.data import HoVerNetTrainDataset, store_dataset
from hovernet.evaluate import evaluate_model
from hovernet.losses import HoVerNetLoss
from hovernet.model import HoVerNet
from nasdm_aug.data.store import parse_store_arg
from nasdm_aug.hardware import LAYOUTS, measured_layout, memory_format, optimizer_step
from nasdm_aug.hardware import resolve_precision as resolve_precision_name
from nasdm_aug.training.checkpoint import (latest_checkpoint, load_optimizer_state, prune_checkpoints, read_safetensors,
                                           read_torch_state, write_checkpoint)
from nasdm_aug.training.distributed import (DistInfo, all_reduce_sum, any_rank, cleanup_distributed, collective_errors,
                                           init_distributed, rank0_choice)
from nasdm_aug.training.metric_log import MetricLogger
from nasdm_aug.training.run_dir import (drop_replaced, prepare_run_dir, restore_replaced, resumed_config,
                                        write_run_record)
from nasdm_aug.training.schedule import step_decay_lr
from nasdm_aug.types import NucleiTypeTable
from nasdm_aug.utils import InputError, write_text_atomic

__all__ = ["train_hovernet", "train_hovernet_on_stores", "lr_at", "resolve_layout", "resolve_precision",
           "resolve_workers", "timing_step"]

_UNIT = "epoch"  # checkpoints/epoch_XXXX
# training steps between the checks for a non-finite loss: each check waits for the device and
# all ranks, so once a step would slow the GPU; a bad step wastes at most this many more
_CHECK_EVERY = 50
_MAX_AUTO_WORKERS = 8


def lr_at(cfg: HoVerNetConfig, epoch: int) -> tuple[int, float]:
    """(phase, learning rate) of a 0-based epoch: each phase restarts at ``lr`` and decays once."""
    phase, in_phase = (1, epoch) if epoch < cfg.phase1_epochs else (2, epoch - cfg.phase1_epochs)
    return phase, step_decay_lr(in_phase, cfg.lr, cfg.lr_decayed, cfg.lr_decay_epoch)


def _resume_state(out: Path) -> dict[str, Any] | None:
    """The latest trainer state and weights of the run in ``out``, or None when it has no checkpoint."""
    ckpt = latest_checkpoint(out, _UNIT)
    if ckpt is None:
        return None
    state = read_torch_state(ckpt / "trainer_state.pt")
    state["weights"] = read_safetensors(ckpt / "model.safetensors")
    return state


def _make_optimizer(model: HoVerNet, cfg: HoVerNetConfig, phase: int) -> torch.optim.Optimizer:
    model.freeze_encoder(phase == 1)
    params = [p for p in model.parameters() if p.requires_grad]
    # the fused kernel updates all parameters in one pass: 1.2x the phase-2 step on a 2-core CPU
    # (benchmarks/RESULTS.md, HoVerNet); the same algorithm, equal to float rounding
    try:
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):  # a device or dtype without the fused kernel
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def timing_step(cfg: HoVerNetConfig, device: torch.device, image_shape: tuple[int, ...],
                fmt: torch.memory_format = torch.contiguous_format) -> Callable[[], None]:
    """A phase-2 training step of a fresh model (no encoder weights: the speed does not depend on
    them) on a random batch of ``cfg.batch_size`` images [3, H, W] in layout ``fmt``, for timing."""
    b, (c, h, w) = cfg.batch_size, image_shape
    model = HoVerNet(cfg.model.replace(encoder_weights=None)).to(device, memory_format=fmt).train()
    opt = _make_optimizer(model, cfg, phase=2)
    loss_fn = HoVerNetLoss(cfg.loss).to(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(b, c, h, w, generator=gen).to(device).contiguous(memory_format=fmt)
    target = {"np": torch.randint(0, 2, (b, h, w), generator=gen).to(device),
              "hv": (torch.rand(b, 2, h, w, generator=gen) * 2 - 1).to(device),
              "nc": torch.randint(0, cfg.model.n_types + 1, (b, h, w), generator=gen).to(device)}
    autocast = resolve_precision(cfg, device).precision == "bf16"

    def loss() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            pred = model(x)
        return loss_fn(pred, target)["loss"]
    return optimizer_step(loss, opt)


def resolve_precision(cfg: HoVerNetConfig, device: torch.device, recorded: str | None = None) -> HoVerNetConfig:
    """``cfg`` with ``precision="auto"`` made concrete: the precision the run was started in
    (``recorded``), else ``"bf16"`` where bf16 is native on ``device`` and ``"fp32"`` elsewhere
    (:func:`nasdm_aug.hardware.resolve_precision`). Other precisions stay."""
    if cfg.precision != "auto":
        return cfg
    return cfg.replace(precision=resolve_precision_name(cfg.precision, device, recorded))


def _recorded_precision(out: Path, resume: bool) -> str | None:
    """The precision in the config.json of the run being resumed, if it has a readable one (a
    broken file is reported by :func:`resumed_config`)."""
    try:
        return HoVerNetConfig.load(out / "config.json").precision if resume else None
    except Exception:
        return None


def resolve_layout(cfg: HoVerNetConfig, device: torch.device, image_shape: tuple[int, ...],
                   recorded: str | None = None) -> str:
    """The memory layout a run trains in: ``cfg.layout``, or for ``"auto"`` the one the run was
    started with (``recorded``), else the faster of the two for a phase-2 step of this model and
    batch on this machine (:func:`nasdm_aug.hardware.measured_layout`, measured once and cached).

    The measurement times :func:`timing_step` under a forked RNG: the run's weights and data order
    are the same whichever layout wins.
    """
    if cfg.layout != "auto":
        return cfg.layout
    if recorded in LAYOUTS:
        return recorded  # type: ignore[return-value]
    cfg = resolve_precision(cfg, device)
    c, h, w = image_shape
    key = (f"hovernet {cfg.model.replace(encoder_weights=None).to_json(indent=None)} batch={cfg.batch_size} "
           f"image={c}x{h}x{w} precision={cfg.precision}")
    return measured_layout(key, lambda fmt: timing_step(cfg, device, image_shape, fmt), device)


def resolve_workers(num_workers: int | None, device: torch.device, local_world_size: int | None = None) -> int:
    """DataLoader workers of a run: ``num_workers`` when set, else none on a CPU (workers would
    take the cores the step computes on) and on CUDA ``min(8, CPUs / ranks on this machine)``, at
    least 1, so augmentation and targets are made while the GPU computes.

    Args:
        num_workers: the config's value (None: choose).
        device: the device the run trains on.
        local_world_size: ranks on this machine; default torchrun's ``LOCAL_WORLD_SIZE``, else 1.
    """
    if num_workers is not None:
        return num_workers
    if device.type != "cuda":
        return 0
    local = local_world_size or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(_MAX_AUTO_WORKERS, cpus // max(1, local)))


def _non_finite(epoch: int) -> InputError:
    return InputError(f"non-finite HoVerNet loss in epoch {epoch + 1}; lower the learning rate or check the data")


def _train_epoch(net: torch.nn.Module, loader: DataLoader, opt: torch.optim.Optimizer, loss_fn: HoVerNetLoss,
                 dev: DistInfo, cfg: HoVerNetConfig, epoch: int, progress: bool, fmt: torch.memory_format) -> dict[str, float]:
    """One pass over the loader; returns loss terms averaged over all samples of all ranks.

    The sums stay on the device (reading a loss on the host waits for the GPU): the host reads
    them every ``_CHECK_EVERY`` steps and once at the end. A non-finite loss on any rank stops
    every rank with the same :class:`InputError` at the next check.
    """
    net.train()
    keys: list[str] = []
    sums = torch.zeros(0, dtype=torch.float64, device=dev.device)  # per loss term: sum of term x batch size
    n_seen = 0
    autocast = torch.autocast(dev.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (progress and dev.is_main), leave=False)
    for step, batch in enumerate(bar, 1):
        batch = {k: v.to(dev.device, non_blocking=True) for k, v in batch.items()}
        batch["image"] = batch["image"].contiguous(memory_format=fmt)
        with autocast:
            pred = net(batch["image"])
        terms = loss_fn(pred, batch)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        n = batch["image"].shape[0]
        if not keys:
            keys = sorted(terms)
            sums = torch.zeros(len(keys), dtype=torch.float64, device=dev.device)
        sums += torch.stack([terms[k].detach().reshape(()) for k in keys]).double() * n
        n_seen += n
        if step % _CHECK_EVERY == 0:
            if any_rank(~torch.isfinite(sums).all()):
                raise _non_finite(epoch)
            if not bar.disable:
                bar.set_postfix(loss=f"{float(sums[keys.index('loss')]) / n_seen:.3f}")
    packed = all_reduce_sum(torch.cat([sums, sums.new_tensor([n_seen])])).tolist()
    if not all(math.isfinite(v) for v in packed):  # reduced: every rank sees the same values
        raise _non_finite(epoch)
    return {k: packed[i] / packed[-1] for i, k in enumerate(keys)}


def train_hovernet(train_data: Dataset, out_dir: str | os.PathLike, cfg: HoVerNetConfig, *,
                   val_data: Dataset | None = None, type_table: NucleiTypeTable | None = None,
                   patch_size: int | None = None, magnification: float | None = None, data_desc: str = "",
                   resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
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
        overwrite: replace a non-empty ``out_dir`` (the old run waits in ``OUT.replaced`` until
            the new one has written its first checkpoint).
        progress: tqdm bars.

    Returns:
        dict with ``epochs_done``, ``best_epoch``, ``best_dice``, ``history``, ``run_dir``,
        ``layout`` (the memory layout it trained in, see :func:`resolve_layout`) and ``precision``
        (``"fp32"`` or ``"bf16"``, see :func:`resolve_precision`). Validation and
        best tracking happen on rank 0; other ranks return ``best_epoch`` -1.

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
        cfg = resolve_precision(cfg, dev.device, _recorded_precision(out, resume))
        # the loader's workers change no item (augmentation is seeded per item): they may change
        cfg = resumed_config(out, cfg, HoVerNetConfig, resume, may_change=("layout", "num_workers"))
        prepare_run_dir(out, resume, overwrite, dev.is_main, _UNIT)
        state = _resume_state(out) if resume else None
        if dev.is_main:
            write_run_record(out, cfg, info)
        try:
            result = _run(train_data, val_data, out, cfg, info, dev, state, progress, type_table)
        except BaseException:
            if dev.is_main:
                restore_replaced(out, _UNIT)
            raise
        if dev.is_main:
            drop_replaced(out)
        return result
    finally:
        cleanup_distributed()


def _run(train_data: Dataset, val_data: Dataset | None, out: Path, cfg: HoVerNetConfig, info: dict[str, Any],
         dev: DistInfo, state: dict[str, Any] | None, progress: bool,
         type_table: NucleiTypeTable | None) -> dict[str, Any]:
    ds = HoVerNetTrainDataset(train_data, cfg.augment, cfg.seed, hed_scale=cfg.hed_scale, hed_shift=cfg.hed_shift)
    recorded = state.get("layout") if state else None
    # one layout per job: rank 0 measures, every rank uses its answer
    layout = rank0_choice(lambda: resolve_layout(cfg, dev.device, tuple(ds[0]["image"].shape), recorded), LAYOUTS, dev)
    fmt = memory_format(layout)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = HoVerNet(cfg.model).to(dev.device, memory_format=fmt)
    st = {"epoch": 0, "best_dice": -math.inf, "best_epoch": -1, "history": [], "layout": layout}
    if state is not None:
        model.load_state_dict(state.pop("weights"))
        st.update({k: state[k] for k in st if k in state})
        st["layout"] = layout
    sampler = DistributedSampler(ds, num_replicas=dev.world_size, rank=dev.rank, shuffle=True, seed=cfg.seed)
    # not persistent_workers: each epoch's workers must get the dataset after set_epoch
    loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler,
                        num_workers=resolve_workers(cfg.num_workers, dev.device), pin_memory=dev.device.type == "cuda")
    loss_fn = HoVerNetLoss(cfg.loss).to(dev.device)
    opt, net, cur_phase = None, model, 0
    logger = MetricLogger(out, resume_step=st["epoch"], key="epoch") if dev.is_main else None
    # the saved Adam state continues only within the phase it belongs to
    saved_opt = state["optimizer"] if state and lr_at(cfg, st["epoch"] - 1)[0] == lr_at(cfg, st["epoch"])[0] else None
    try:
        for epoch in range(st["epoch"], cfg.epochs):
            phase, lr = lr_at(cfg, epoch)
            if phase != cur_phase:  # a fresh Adam per phase, as HoVerNet; DDP re-wrapped for the new trainable set
                opt, cur_phase = _make_optimizer(model, cfg, phase), phase
                if saved_opt is not None:
                    load_optimizer_state(opt, saved_opt)
                    saved_opt = None
                net = DistributedDataParallel(model, device_ids=[dev.device] if dev.device.type == "cuda" else None) \
                    if dev.enabled else model
            for g in opt.param_groups:  # type: ignore[union-attr]
                g["lr"] = lr
            ds.set_epoch(epoch)
            sampler.set_epoch(epoch)
            t0 = time.perf_counter()
            record: dict[str, Any] = {"epoch": epoch + 1, "phase": phase, "lr": lr,
                                      **_train_epoch(net, loader, opt, loss_fn, dev, cfg, epoch, progress, fmt)}  # type: ignore[arg-type]
            record["patches_per_s"] = len(ds) / (time.perf_counter() - t0)
            # validation and the checkpoint run on rank 0 while the others wait: an error there
            # stops them all with its message (and leaving the block is the barrier)
            with collective_errors():
                if dev.is_main:
                    _end_epoch(model, opt, st, record, epoch, cfg, val_data, out, info, type_table, progress,
                               logger)  # type: ignore[arg-type]
            st["epoch"] = epoch + 1
    finally:
        if logger is not None:
            logger.close()
    return {"epochs_done": st["epoch"], "best_epoch": st["best_epoch"], "best_dice": st["best_dice"],
            "history": st["history"], "run_dir": str(out), "layout": layout,
            "precision": cfg.precision}


def _end_epoch(model: HoVerNet, opt: torch.optim.Optimizer, st: dict[str, Any], record: dict[str, Any], epoch: int,
               cfg: HoVerNetConfig, val_data: Dataset | None, out: Path, info: dict[str, Any],
               type_table: NucleiTypeTable | None, progress: bool, logger: MetricLogger) -> None:
    """Rank 0: validate when due, log, checkpoint, track the best and prune (a kill between the log
    and the checkpoint leaves a record past the checkpoint, which the resumed logger drops)."""
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
    logger.write(record)
    path = write_checkpoint(out, epoch + 1, weights={"model": model.state_dict()},
                            trainer_state={**st, "epoch": epoch + 1, "optimizer": opt.state_dict()}, config=cfg,
                            data_info=info, unit=_UNIT)
    if better:
        best_dice = st["best_dice"] if math.isfinite(st["best_dice"]) else None
        write_text_atomic(out / "best.json", json.dumps({"epoch": epoch + 1, "dice": best_dice,
                                                         "path": f"checkpoints/{path.name}"}, indent=2) + "\n")
    prune_checkpoints(out, keep=(st["best_epoch"],), unit=_UNIT)
    drop_replaced(out)  # the new run has a checkpoint: a run it replaced can go


def train_hovernet_on_stores(train: str, out_dir: str | os.PathLike, cfg: HoVerNetConfig, *, val: str | None = None,
                             resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """:func:`train_hovernet` on the real patches of ``train`` (``STORE[:SPLIT]``, split Train when
    none is named), validated on ``val`` (``STORE:SPLIT``), recording the training store's type
    table, patch size and magnification.

    Raises:
        InputError: as :func:`train_hovernet`, and a store that is unreadable or a split it lacks.
    """
    train_ds = store_dataset(*parse_store_arg(train, "Train"))
    val_ds = store_dataset(*parse_store_arg(val)) if val else None
    store = train_ds.real
    return train_hovernet(train_ds, out_dir, cfg, val_data=val_ds, type_table=store.type_table,
                          patch_size=store.patch_size, magnification=store.magnification,
                          data_desc=f"train={train} val={val}", resume=resume, overwrite=overwrite, progress=progress)
