"""HoVerNet model, loss, trainer, evaluator and CLI on tiny synthetic stores (64 px, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hovernet.config import LossConfig, ModelConfig, HoVerNetConfig, get_hovernet_preset
from hovernet.losses import HoVerNetLoss
from hovernet.model import HoVerNet
from hovernet.targets import compute_targets
from nasdm_aug import hardware
from nasdm_aug.types import CONSEP
from nasdm_aug.utils import InputError

SMALL = ModelConfig(encoder="resnet18", decoder_channels=(16, 8, 8, 8, 8), dense_units=0, growth=4, n_types=4)


pytestmark = pytest.mark.usefixtures("one_thread")


def _patch(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pink background with dark disks (nuclei) whose shade encodes their type: learnable."""
    inst = np.zeros((size, size), np.int32)
    typ = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for k in range(1, 7):
        cy, cx, r = rng.integers(6, size - 6), rng.integers(6, size - 6), rng.integers(3, 6)
        disk = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (inst == 0)
        inst[disk], typ[disk] = k, 1 + k % 2
    image = np.empty((size, size, 3), np.uint8)
    image[:] = (230, 180, 210)
    image[typ == 1] = (80, 40, 140)
    image[typ == 2] = (150, 60, 90)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    return image, inst, typ


def _items(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        image, inst, typ = _patch(rng)
        out.append({"image": image.transpose(2, 0, 1).astype(np.float32) / 255, "inst": inst[None], "type": typ[None]})
    return out


@pytest.fixture
def store(tmp_path: Path) -> Path:
    from nasdm_aug.data.store_writer import PatchStoreWriter

    path = tmp_path / "s.h5"
    rng = np.random.default_rng(1)
    with PatchStoreWriter(path, patch_size=64, type_table=CONSEP) as w:
        for i in range(6):
            image, inst, typ = _patch(rng)
            w.append(image, inst, typ, source=f"img{i % 3}")
        w.set_splits({"Train": ["img0", "img1"], "Test": ["img2"]})
    return path


def _cfg(**kw) -> HoVerNetConfig:
    base = dict(model=SMALL, phase1_epochs=1, phase2_epochs=1, lr=1e-3, lr_decayed=1e-4, lr_decay_epoch=1,
                batch_size=2, val_every=1, augment=True, device="cpu")
    base.update(kw)
    return HoVerNetConfig(**base)


@pytest.mark.parametrize("size", [64, 128])
def test_output_shapes_match_input(size):
    cfg = SMALL if size == 64 else get_hovernet_preset("tiny").model
    out = HoVerNet(cfg)(torch.rand(1, 3, size, size))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "np": (1, 2, size, size), "hv": (1, 2, size, size), "nc": (1, cfg.n_types + 1, size, size)}


@pytest.mark.parametrize("bad", [(1, 3, 48, 64), (1, 1, 64, 64), (3, 64, 64)])
def test_bad_input_shapes_raise(bad):
    with pytest.raises(ValueError, match="multiples of 32"):
        HoVerNet(SMALL)(torch.rand(*bad))


@pytest.mark.parametrize("kw", [{"decoder_channels": (8, 8)}, {"n_types": 0}, {"dense_units": -1}])
def test_bad_model_configs_raise(kw):
    with pytest.raises(ValueError):
        ModelConfig(**kw)


def test_encoder_weights_local_file_and_errors(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    src = HoVerNet(SMALL)
    path = tmp_path / "enc.safetensors"
    save_file({f"encoder.{k}": v.contiguous() for k, v in src.encoder.state_dict().items()}, str(path))
    dst = HoVerNet(SMALL.replace(encoder_weights=str(path)))
    assert all(torch.equal(a, b) for a, b in zip(src.encoder.state_dict().values(), dst.encoder.state_dict().values()))
    with pytest.raises(InputError, match="not found"):
        HoVerNet(SMALL.replace(encoder_weights=str(tmp_path / "missing.pt")))
    with pytest.raises(InputError, match="unknown smp encoder"):
        HoVerNet(SMALL.replace(encoder="no_such_net"))

    import segmentation_models_pytorch.encoders as enc

    downloads = []
    monkeypatch.setattr(enc, "hf_hub_download", lambda *a, **k: downloads.append(a) or 1 / 0)  # never download
    with pytest.raises(InputError, match="`encoder_weights` imagenet would download the ImageNet weights at run "
                                         "time, which nasdm-aug never does: pass `encoder_weights` FILE"):
        HoVerNet(SMALL.replace(encoder_weights="imagenet"))
    assert downloads == []
    # a config that names imagenet still loads (an old run's), and the ones that build no encoder
    # weights (evaluation, layout timing) still work with it
    assert ModelConfig.from_dict(SMALL.replace(encoder_weights="imagenet").to_dict()).encoder_weights == "imagenet"


def test_cli_refuses_imagenet_weights_before_any_work_and_says_so_in_help(tmp_path, capsys):
    from click.testing import CliRunner

    from cli.main import cli, main

    with pytest.raises(SystemExit) as exc:
        main(["hovernet", "train", "--train", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "run"),
              "--encoder-weights", "imagenet"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and not (tmp_path / "run").exists() and len(err.strip().splitlines()) == 1
    assert "--encoder-weights imagenet would download the ImageNet weights at run time" in err
    helptext = " ".join(CliRunner().invoke(cli, ["hovernet", "train", "--help"]).output.split())
    assert "Nothing is downloaded at run time, so 'imagenet' is refused: pass a local copy of the ImageNet weights" in helptext
    cfg = HoVerNetConfig.from_options("tiny", encoder_weights="none", epochs=4, workers=0, seed=3)
    assert cfg.model.encoder_weights is None and (cfg.phase1_epochs, cfg.phase2_epochs, cfg.lr_decay_epoch) == (4, 4, 2)
    assert (cfg.num_workers, cfg.seed) == (0, 3) and cfg.precision == get_hovernet_preset("tiny").precision


def test_loss_equals_monai_hovernet_loss():
    from monai.apps.pathology.losses import HoVerNetLoss as MonaiLoss

    torch.manual_seed(0)
    items = _items(2)
    t = [compute_targets(i["inst"], i["type"]) for i in items]
    target = {k: torch.stack([x[k] for x in t]) for k in ("np", "hv", "nc")}
    pred = {"np": torch.randn(2, 2, 64, 64), "hv": torch.randn(2, 2, 64, 64), "nc": torch.randn(2, 5, 64, 64)}
    w = LossConfig(np_ce=0.5, np_dice=1.5, hv_mse=2.0, hv_mse_grad=0.7, nc_ce=1.2, nc_dice=0.3)
    ours = HoVerNetLoss(w)(pred, target)
    onehot = lambda a, c: torch.nn.functional.one_hot(a, c).permute(0, 3, 1, 2).float()  # noqa: E731
    from monai.utils.enums import HoVerNetBranch as B

    names = {"np": B.NP.value, "hv": B.HV.value, "nc": B.NC.value}  # MONAI's long branch names
    ref = MonaiLoss(lambda_hv_mse=2.0, lambda_hv_mse_grad=0.7, lambda_np_ce=0.5, lambda_np_dice=1.5,
                    lambda_nc_ce=1.2, lambda_nc_dice=0.3)(
        {names[k]: v for k, v in pred.items()},
        {names["np"]: onehot(target["np"], 2), names["hv"]: target["hv"], names["nc"]: onehot(target["nc"], 5)})
    assert float(ours["loss"]) == pytest.approx(float(ref), rel=1e-5)
    # plain tensors throughout: no MONAI metadata bookkeeping in the loss or its backward
    assert all(type(v) is torch.Tensor for v in ours.values())
    assert set(ours) == {"loss", "np_ce", "np_dice", "hv_mse", "hv_mse_grad", "nc_ce", "nc_dice"}


def test_frozen_encoder_gets_no_gradient():
    model = HoVerNet(SMALL)
    model.freeze_encoder(True)
    sum(v.mean() for v in model(torch.rand(2, 3, 64, 64)).values()).backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.decoders.parameters())


def test_lr_schedule_per_phase():
    from hovernet.trainer import lr_at

    cfg = get_hovernet_preset("paper")
    assert [lr_at(cfg, e) for e in (0, 24, 25, 49, 50, 74, 75, 99)] == [
        (1, 1e-4), (1, 1e-4), (1, 1e-5), (1, 1e-5), (2, 1e-4), (2, 1e-4), (2, 1e-5), (2, 1e-5)]
    assert cfg.batch_size == 16 and cfg.val_every == 2 and cfg.model.encoder == "resnet50"
    assert HoVerNetConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_augmented_items_are_plain_aligned_and_seeded():
    """Augmented items come as plain tensors (MONAI's metadata tracking is restored after), their
    targets are those of the augmented label maps, and an item depends on (seed, epoch, index) only."""
    from monai.data import get_track_meta

    from hovernet.data import HoVerNetTrainDataset

    items = _items(3, seed=5)
    ds = HoVerNetTrainDataset(items, augment=True, seed=7)
    assert get_track_meta()
    a = [ds[i] for i in range(3)]
    assert get_track_meta()  # the scoped switch put MONAI's global setting back
    assert all(type(v) is torch.Tensor for item in a for v in item.values())
    again = HoVerNetTrainDataset(items, augment=True, seed=7)
    assert all(torch.equal(a[2][k], again[2][k]) for k in a[2])
    ds.set_epoch(1)
    assert not torch.equal(ds[2]["hv"], a[2]["hv"]) or not torch.equal(ds[2]["image"], a[2]["image"])
    # the spatial draw moves image and labels together: the dark nuclei pixels are where np says
    for item in a:
        dark = item["image"].mean(0) < 0.5
        assert (dark == (item["np"] > 0)).float().mean() > 0.97


def test_overfit_few_patches():
    """Two patches, 40 Adam steps: np CE falls 10x, hv MSE 10x, and the watershed recovers the nuclei."""
    from hovernet.data import HoVerNetTrainDataset
    from hovernet.evaluate import evaluate_model
    from hovernet.trainer import _make_optimizer

    torch.manual_seed(0)
    items = _items(2, seed=3)
    cfg = _cfg(augment=False, model=SMALL.replace(encoder="mobilenet_v2"))  # 2x faster than resnet18 here
    model = HoVerNet(cfg.model)
    opt = _make_optimizer(model, cfg.replace(lr=1e-2), phase=2)
    ds = HoVerNetTrainDataset(items, augment=False)
    batch = {k: torch.stack([ds[i][k] for i in range(2)]) for k in ("image", "np", "hv", "nc")}
    loss_fn, first = HoVerNetLoss(), None
    for _ in range(40):
        terms = loss_fn(model(batch["image"]), batch)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        first = first or {k: float(v.detach()) for k, v in terms.items()}
    last = {k: float(v.detach()) for k, v in terms.items()}
    assert last["np_ce"] < first["np_ce"] / 10 and last["hv_mse"] < first["hv_mse"] / 10, (first, last)
    metrics, kept = evaluate_model(model, items, cfg, batch_size=2, n_keep=1, progress=False)
    # two patches do not hold every type, and CoNIC's mPQ+ counts an absent type as 0: judge the
    # types that are there
    assert metrics["dice"] > 0.85 and metrics["pq"] > 0.6 and metrics["mpq_plus_present"] > 0.5, metrics
    assert kept[0]["image"].dtype == np.uint8 and kept[0]["pred_inst"].max() >= 4


def test_resume_after_a_kill_equals_uninterrupted_run(tmp_path, monkeypatch):
    import hovernet.trainer as trainer

    items, cfg = _items(4), _cfg()
    full = trainer.train_hovernet(items, tmp_path / "full", cfg, val_data=items[:2], type_table=CONSEP, progress=False)
    end_epoch = trainer._end_epoch

    def killed_after_first_checkpoint(*args, **kwargs):  # as a kill right after epoch 1 is saved
        end_epoch(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_end_epoch", killed_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        trainer.train_hovernet(items, tmp_path / "part", cfg, val_data=items[:2], type_table=CONSEP, progress=False)
    monkeypatch.setattr(trainer, "_end_epoch", end_epoch)
    # were the layout measured again now, it would come out the other one: the run keeps its own
    other = [x for x in ("channels_last", "contiguous") if x != full["layout"]][0]
    monkeypatch.setattr(hardware, "fastest_layout", lambda *a, **k: (other, {}))
    assert sorted(p.name for p in (tmp_path / "part/checkpoints").iterdir()) == ["epoch_0001"]
    with pytest.raises(InputError, match="already holds a run; pass `resume`"):
        trainer.train_hovernet(items, tmp_path / "part", cfg, type_table=CONSEP, progress=False)
    rest = trainer.train_hovernet(items, tmp_path / "part", cfg, val_data=items[:2], type_table=CONSEP,
                                  resume=True, progress=False)
    assert rest["epochs_done"] == full["epochs_done"] == 2 and rest["layout"] == full["layout"]
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "full/checkpoints/epoch_0002/model.safetensors"))
    b = load_file(str(tmp_path / "part/checkpoints/epoch_0002/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    best = json.loads((tmp_path / "full/best.json").read_text())
    assert best["epoch"] == full["best_epoch"] and (tmp_path / "full" / best["path"]).is_dir()
    log = [json.loads(x) for x in (tmp_path / "full/log.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in log] == [1, 2] and "dice" in log[0]["val"]
    resumed_log = [json.loads(x) for x in (tmp_path / "part/log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in resumed_log] == [1, 2]  # one record per epoch, none twice
    with pytest.raises(InputError, match=r"differs from the run's in \['seed'\]"):
        trainer.train_hovernet(items, tmp_path / "part", cfg.replace(seed=5), resume=True, type_table=CONSEP,
                               progress=False)
    # --overwrite: the old run waits aside until the new one has a checkpoint, and comes back if it dies first
    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_train_epoch", dies)
    with pytest.raises(KeyboardInterrupt):
        trainer.train_hovernet(items, tmp_path / "part", cfg.replace(seed=5), type_table=CONSEP, overwrite=True,
                               progress=False)
    assert trainer.HoVerNetConfig.load(tmp_path / "part/config.json") == cfg.replace(model=cfg.model.replace(n_types=4))
    assert not (tmp_path / "part.replaced").exists()


def test_cli_train_evaluate_predict(store, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from cli.main import cli

    cfg_path = tmp_path / "run.json"
    _cfg(phase2_epochs=0).save(cfg_path)
    r = CliRunner().invoke(cli, ["hovernet", "train", "--train", str(store), "--out", str(tmp_path / "run"),
                                 "--config", str(cfg_path), "--dry-run"])
    assert r.exit_code == 0 and json.loads(r.output)["phase2_epochs"] == 0
    assert json.loads(r.output)["precision"] == "fp32"
    r = CliRunner().invoke(cli, ["hovernet", "train", "--train", str(store), "--out", str(tmp_path / "run"),
                                 "--config", str(cfg_path), "--precision", "auto", "--dry-run"])
    assert r.exit_code == 0 and json.loads(r.output)["precision"] == "auto"
    run = tmp_path / "run"
    r = CliRunner().invoke(cli, ["hovernet", "train", "--train", f"{store}:Train", "--val", f"{store}:Test",
                                 "--out", str(run), "--config", str(cfg_path)])
    assert r.exit_code == 0, r.output
    assert "best epoch 1 (val Dice 0." in r.output and ", fp32; run in" in r.output
    r = CliRunner().invoke(cli, ["hovernet", "train", "--train", f"{store}:Train", "--out", str(tmp_path / "noval"),
                                 "--config", str(cfg_path)])
    assert r.exit_code == 0 and "trained 1 epochs; kept the last epoch (no --val) in the" in r.output, r.output
    assert json.loads((run / "data.json").read_text())["patch_size"] == 64
    r = CliRunner().invoke(cli, ["hovernet", "evaluate", "--model", str(run), "--data", f"{store}:Test",
                                 "--out", str(tmp_path / "ev"), "--overlays", "2"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert metrics["n_patches"] == 2 and set(metrics["per_type"]) == set(CONSEP.names)
    assert Image.open(tmp_path / "ev/overlay.png").size[0] > 3 * 64
    Image.fromarray(_patch(np.random.default_rng(0), 64)[0][:50, :60]).save(tmp_path / "x.png")
    r = CliRunner().invoke(cli, ["hovernet", "predict", "--model", str(run), "--image", str(tmp_path / "x.png"),
                                 "--out", str(tmp_path / "y.png")])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "y.png").size == (60, 50) and np.load(tmp_path / "y.npz")["inst"].shape == (50, 60)
    from cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["hovernet", "evaluate", "--model", str(run), "--data", f"{store}:Nope", "--out", str(tmp_path / "e2")])
    assert exc.value.code == 2


def test_training_layout_is_measured_cached_or_given(tmp_path, monkeypatch):
    """"auto" measures both layouts once per machine and model (then the cache answers); a given
    layout is used as it is, and the two layouts train to the same weights up to float rounding."""
    import hovernet.trainer as trainer

    monkeypatch.setenv("NASDM_AUG_CACHE", str(tmp_path / "cache"))
    cfg = _cfg(phase1_epochs=0, phase2_epochs=1, augment=False)
    measured = trainer.resolve_layout(cfg, torch.device("cpu"), (3, 64, 64))
    cache = json.loads((tmp_path / "cache" / "layouts.json").read_text())
    (key,) = cache
    assert measured in ("channels_last", "contiguous") and cache[key]["layout"] == measured and "batch=2" in key
    monkeypatch.setattr(trainer, "HoVerNet", None)  # building a model now would fail: the cache must answer
    assert trainer.resolve_layout(cfg, torch.device("cpu"), (3, 64, 64)) == measured
    assert trainer.resolve_layout(cfg, torch.device("cpu"), (3, 64, 64), recorded="contiguous") == "contiguous"
    monkeypatch.undo()
    from safetensors.torch import load_file

    items, weights, losses = _items(2), {}, {}
    for layout in ("channels_last", "contiguous"):
        out = trainer.train_hovernet(items, tmp_path / layout, cfg.replace(layout=layout), type_table=CONSEP,
                                     progress=False)
        assert out["layout"] == layout
        weights[layout] = load_file(str(tmp_path / layout / "checkpoints/epoch_0001/model.safetensors"))
        losses[layout] = out["history"][0]["loss"]
    assert losses["channels_last"] == pytest.approx(losses["contiguous"], rel=1e-5)
    a, b = weights["channels_last"], weights["contiguous"]
    # one Adam step moves each weight by about lr * sign(gradient): a gradient that differed
    # beyond rounding would show as a 2 lr gap; rounding only flips weights whose gradient is ~0
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=cfg.lr / 2) for k in a)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # two layouts, two summation orders
    with pytest.raises(ValueError, match="layout must be one of auto, channels_last, contiguous, got 'nhwc'"):
        cfg.replace(layout="nhwc")


def test_precision_auto_is_bf16_only_where_native_and_kept_on_resume(tmp_path, monkeypatch):
    """"auto" trains in bf16 only where bf16 is native, records the precision it chose, and a run
    resumed with "auto" on a machine where it means the other precision keeps its own; an explicit
    other precision is refused as a changed config."""
    import hovernet.trainer as trainer

    cpu, cfg = torch.device("cpu"), _cfg(phase1_epochs=0, phase2_epochs=2, augment=False, layout="contiguous",
                                         precision="auto")
    for native, chosen in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(hardware, "native_bf16", lambda device, native=native: native)
        assert trainer.resolve_precision(cfg, cpu).precision == chosen
        assert trainer.resolve_precision(cfg, cpu, recorded="bf16").precision == "bf16"
        assert trainer.resolve_precision(cfg.replace(precision="fp32"), cpu).precision == "fp32"
    seen = []
    train_epoch, end_epoch = trainer._train_epoch, trainer._end_epoch

    def recording(net, loader, opt, loss_fn, dev, run_cfg, *args):
        seen.append(run_cfg.precision)
        return train_epoch(net, loader, opt, loss_fn, dev, run_cfg, *args)

    def killed_after_first_checkpoint(*args, **kwargs):
        end_epoch(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_train_epoch", recording)
    monkeypatch.setattr(trainer, "_end_epoch", killed_after_first_checkpoint)
    monkeypatch.setattr(hardware, "native_bf16", lambda device: True)
    items, out = _items(2), tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        trainer.train_hovernet(items, out, cfg, type_table=CONSEP, progress=False)
    assert seen == ["bf16"] and trainer.HoVerNetConfig.load(out / "config.json").precision == "bf16"
    monkeypatch.setattr(trainer, "_end_epoch", end_epoch)
    monkeypatch.setattr(hardware, "native_bf16", lambda device: False)  # auto now means fp32 here
    with pytest.raises(InputError, match=r"differs from the run's in \['precision'\]"):
        trainer.train_hovernet(items, out, cfg.replace(precision="fp32"), type_table=CONSEP, resume=True,
                               progress=False)
    rest = trainer.train_hovernet(items, out, cfg, type_table=CONSEP, resume=True, progress=False)
    assert rest["precision"] == "bf16" and rest["epochs_done"] == 2 and seen == ["bf16", "bf16"]
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, auto, got 'fp16'"):
        cfg.replace(precision="fp16")
