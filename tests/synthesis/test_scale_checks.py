"""Magnification and patch size travel with stores, runs, generators and banks; mixing scales is refused.

Each refusal is one line naming both sides and writes nothing. A 20x model is simulated by editing
the magnification into a tiny run's data.json files (``load_data_info`` reads the checkpoint's).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import nasdm_aug.generator as generator
from cli.main import main
from nasdm_aug.data.store import PatchStore
from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.generator import NASDMGenerator, TOY_MODEL_DIR, named_model_dir, resolve_model_dirs
from nasdm_aug.mixing import SyntheticMixDataset
from nasdm_aug.synthesize import SynthesizeConfig, synthesize
from nasdm_aug.training.checkpoint import latest_checkpoint, load_data_info
from nasdm_aug.types import LIZARD
from nasdm_aug.utils import InputError
from nasdm_aug.sampling import SamplerOptions
from nasdm_test_runs import _NET, SIZE

FAST = dict(sampling=SamplerOptions("ddim", steps=2), batch_size=4)
N_PATCHES = 8


def _write_store(path: Path, magnification: float | None, size: int = SIZE) -> Path:
    """``N_PATCHES`` disc-mask patches in split Train (the same masks for every magnification)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    attrs = {} if magnification is None else {"magnification": magnification}
    with PatchStoreWriter(path, patch_size=size, type_table=LIZARD, attrs=attrs) as w:
        for i in range(N_PATCHES):
            inst = np.zeros((size, size), np.int32)
            type_map = np.zeros((size, size), np.uint8)
            for k in (1, 2):
                cy, cx = int(rng.integers(4, size - 4)), int(rng.integers(4, size - 4))
                disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 9
                inst[disc], type_map[disc] = k, int(rng.integers(1, 7))
            image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            w.append(image, inst, type_map, source=f"img{i % 4}", y=i, x=0)
        w.set_splits({"Train": [f"img{i}" for i in range(4)]})
    return path


def _set_magnification(run: Path, magnification: float | None) -> Path:
    """Record ``magnification`` in every data.json of a run (top level and checkpoints)."""
    files = list(run.rglob("data.json"))
    assert resolve_ckpt_data(run) in files
    for f in files:
        info = json.loads(f.read_text())
        info["magnification"] = magnification
        f.write_text(json.dumps(info))
    assert load_data_info(run)["magnification"] == magnification
    return run


def resolve_ckpt_data(run: Path) -> Path:
    return latest_checkpoint(run) / "data.json"


def _copy_runs(runs, root: Path, mask_mag, patch_mag) -> tuple[Path, Path]:
    mask, patch = root / "mask", root / "patch"
    shutil.copytree(runs[0], mask)
    shutil.copytree(runs[1], patch)
    return _set_magnification(mask, mask_mag), _set_magnification(patch, patch_mag)


@pytest.fixture(scope="module")
def runs20(runs, tmp_path_factory):
    """The tiny mask and patch runs, recorded at 20x."""
    return _copy_runs(runs, tmp_path_factory.mktemp("runs20"), 20.0, 20.0)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    return {m: _write_store(root / f"real_{m}.h5", m) for m in (20.0, 40.0, None)}


@pytest.fixture(scope="module")
def bank20(runs20, stores, tmp_path_factory):
    out = tmp_path_factory.mktemp("bank") / "bank.h5"
    cfg = SynthesizeConfig(model=tuple(map(str, runs20)), masks=str(stores[20.0]), **FAST)
    synthesize(cfg, out, device="cpu", progress=False)
    return out


# -- 1. synthesize: mask store vs model ----------------------------------------------------------
def test_synthesize_refuses_40x_store_for_20x_model(runs20, stores, tmp_path):
    out = tmp_path / "bank.h5"
    cfg = SynthesizeConfig(model=tuple(map(str, runs20)), masks=str(stores[40.0]), **FAST)
    with pytest.raises(InputError, match=r"mask store .*real_40\.0\.h5 is at 40x but the model .* is at 20x"):
        synthesize(cfg, out, device="cpu", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_synthesize_cli_scale_error_is_one_line(runs20, stores, tmp_path, capsys):
    out = tmp_path / "bank.h5"
    argv = ["synthesize", "--model", str(runs20[0]), "--model", str(runs20[1]), "--out", str(out),
            "--masks", str(stores[40.0]), "--sampler", "ddim", "--steps", "2", "--device", "cpu"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "40x" in err and "20x" in err and str(stores[40.0]) in err
    assert list(tmp_path.iterdir()) == []


def test_store_without_magnification_is_accepted(runs20, stores, tmp_path):
    assert PatchStore(stores[None]).magnification is None
    assert PatchStore(stores[None]).scale_info() == {"patch_size": SIZE, "magnification": None}
    out = tmp_path / "bank.h5"
    cfg = SynthesizeConfig(model=tuple(map(str, runs20)), masks=str(stores[None]), indices=(0, 1), **FAST)
    result = synthesize(cfg, out, device="cpu", progress=False)
    assert result["n_patches"] == 2 and len(PatchStore(out)) == 2


# -- 2. the bank records the model's magnification -----------------------------------------------
def test_bank_records_model_magnification(bank20, runs20, stores):
    gen = NASDMGenerator.from_pretrained(*runs20, device="cpu")
    assert gen.magnification == 20.0 and gen.scale_info() == {"patch_size": SIZE, "magnification": 20.0}
    bank = PatchStore(bank20)
    assert bank.attrs["magnification"] == gen.magnification == 20.0
    assert bank.magnification == 20.0 and bank.origin == "synthetic" and len(bank) == N_PATCHES


def test_bank_of_unrecorded_model_records_none(runs, stores, tmp_path):
    assert "magnification" not in load_data_info(runs[1])  # make_run predates the field
    out = tmp_path / "bank.h5"
    cfg = SynthesizeConfig(model=tuple(map(str, runs)), masks=str(stores[40.0]), indices=(0,), **FAST)
    synthesize(cfg, out, device="cpu", progress=False)
    assert PatchStore(out).magnification is None


# -- 3. mixing: bank vs real store ----------------------------------------------------------------
def test_mix_refuses_20x_bank_with_40x_real(bank20, stores):
    ds = SyntheticMixDataset(stores[20.0], bank20, mode="add", ratio=0.5)  # same scale: fine
    assert len(ds) > 0
    with pytest.raises(InputError, match=r"bank .*bank\.h5 is at 20x but the real store .*real_40\.0\.h5 is at 40x"):
        SyntheticMixDataset(stores[40.0], bank20, mode="add", ratio=0.5)
    # a real store that does not record its magnification is not compared
    assert len(SyntheticMixDataset(stores[None], bank20, mode="add", ratio=0.5)) == len(ds)


# -- 4. from_pretrained: mask run vs patch run ----------------------------------------------------
def test_from_pretrained_refuses_runs_of_different_magnification(runs, tmp_path):
    mask, patch = _copy_runs(runs, tmp_path, 20.0, 40.0)
    with pytest.raises(InputError, match=r"mask model .*mask is at 20x but patch model .*patch is at 40x"):
        NASDMGenerator.from_pretrained(mask, patch, device="cpu")
    # a patch-only generator has nothing to compare, and takes the patch run's magnification
    assert NASDMGenerator.from_pretrained(None, patch, device="cpu").magnification == 40.0


# -- 5. shipped models by name --------------------------------------------------------------------
def test_named_models(monkeypatch, tmp_path):
    assert named_model_dir("nope") is None
    assert named_model_dir("toy") == TOY_MODEL_DIR
    assert resolve_model_dirs(["toy"]) == (TOY_MODEL_DIR / "mask", TOY_MODEL_DIR / "patch")
    assert resolve_model_dirs("toy") == (TOY_MODEL_DIR / "mask", TOY_MODEL_DIR / "patch")
    monkeypatch.setitem(generator.NAMED_MODELS, "ghost", tmp_path / "ghost")
    (tmp_path / "ghost" / "mask").mkdir(parents=True)  # a mask/ folder without a run is not enough
    for call in (lambda: named_model_dir("ghost"), lambda: resolve_model_dirs(["ghost"]),
                 lambda: NASDMGenerator.from_pretrained("ghost", device="cpu")):
        with pytest.raises(InputError, match=r"'ghost' is not in this installation"):
            call()


# -- 6. train --resume on a store of another scale ------------------------------------------------
def _snapshot(run: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(run)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(run.rglob("*")) if p.is_file()}


def test_train_resume_refuses_store_of_other_scale(stores, tmp_path):
    from nasdm_aug.training.config import DiffusionSettings, get_train_preset
    from nasdm_aug.training.run import train

    cfg = get_train_preset("mask", "tiny", **_NET).replace(
        diffusion=DiffusionSettings(steps=50), batch_size=2, steps=2, log_every=1, ckpt_every=2, sample_every=0)
    run = train("mask", stores[20.0], "Train", cfg, tmp_path / "run", progress=False, device="cpu")
    assert json.loads((run / "data.json").read_text())["magnification"] == 20.0
    assert load_data_info(run)["magnification"] == 20.0
    before, ckpt = _snapshot(run), latest_checkpoint(run)

    with pytest.raises(InputError, match=r"run .*run is at 20x but store .*real_40\.0\.h5 is at 40x"):
        train("mask", stores[40.0], "Train", None, run, resume=True, steps=4, progress=False, device="cpu")
    big = _write_store(tmp_path / "big.h5", 20.0, size=2 * SIZE)
    # another patch size: refused too (by check_model_fits, before the scale check; names 16 and 32)
    with pytest.raises(InputError, match=r"model\.image_size is 16 but the data .* need 32 .*32-px patches"):
        train("mask", big, "Train", None, run, resume=True, steps=4, progress=False, device="cpu")
    assert _snapshot(run) == before and latest_checkpoint(run) == ckpt

    # a store that does not record its magnification resumes, and the run keeps its 20x
    train("mask", stores[None], "Train", None, run, resume=True, steps=4, progress=False, device="cpu")
    assert latest_checkpoint(run).name.endswith("4")
    assert json.loads((run / "data.json").read_text())["magnification"] == 20.0
    assert load_data_info(run)["magnification"] == 20.0
