"""`nasdm-aug evaluate` end to end on tiny stores, a tiny TorchScript feature net and an untrained HoVerNet."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from html_check import check_in_browser, check_self_contained, find_browser

from cli.main import cli
from nasdm_aug.data.store import PatchStore
from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.metrics.evaluate import EvaluateConfig, fidelity_metrics
from nasdm_aug.metrics.mask_checks import contact_statistics
from nasdm_aug.metrics.stain import nucleus_haematoxylin
from nasdm_aug.types import LIZARD
from nasdm_aug.utils import file_digest

SIZE = 32


def _patches(rng: np.random.Generator, n: int):
    """n patches with 1-3 square nuclei each, types 2 (epithelial) or 3 (lymphocyte)."""
    out = []
    for _ in range(n):
        img = np.full((SIZE, SIZE, 3), (230, 180, 210), np.uint8)
        inst, typ = np.zeros((SIZE, SIZE), np.int32), np.zeros((SIZE, SIZE), np.uint8)
        for k in range(1, rng.integers(2, 5)):
            y, x = rng.integers(2, SIZE - 8, 2)
            inst[y:y + 6, x:x + 6], typ[y:y + 6, x:x + 6] = k, rng.choice([2, 3])
            img[y:y + 6, x:x + 6] = (90, 50, 140)
        out.append((img, inst, typ))
    return out


class _TinyFeatures(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(0)
    real = root / "real.h5"
    with PatchStoreWriter(real, patch_size=SIZE, type_table=LIZARD) as w:
        for i, (img, inst, typ) in enumerate(_patches(rng, 8)):
            w.append(img, inst, typ, source=f"img{min(i, 3)}")  # R1 (img0) holds 1 patch
        w.set_splits({"Train": ["img0", "img1", "img2"], "R1": ["img0"], "R2": ["img3"], "Test": ["img3"]})
    bank = root / "bank.h5"
    with PatchStoreWriter(bank, patch_size=SIZE, type_table=LIZARD, origin="synthetic",
                          config={"types": "epithelial", "seed": 0}) as w:
        for i, (img, inst, typ) in enumerate(_patches(rng, 6)):
            w.append(img, inst, typ, parent=i if i < 2 else -1)
    feats = root / "feats.pt"
    torch.jit.script(_TinyFeatures()).save(str(feats))
    hv = root / "hovernet"
    hv.mkdir()
    from hovernet.config import get_hovernet_preset
    from hovernet.model import HoVerNet

    torch.manual_seed(0)
    cfg = get_hovernet_preset("tiny")
    model = HoVerNet(cfg.model)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(hv / "model.safetensors"))
    cfg.save(hv / "config.json")
    (hv / "data.json").write_text(json.dumps({"type_table": LIZARD.to_json(), "patch_size": SIZE}))
    return {"real": real, "bank": bank, "feats": feats, "hovernet": hv, "root": root}


def _fid_by_hand(real, bank) -> float:
    """MONAI's FID between the tiny net's features of every bank patch and every real patch."""
    import warnings

    from monai.metrics import FIDMetric
    from scipy.linalg import LinAlgWarning

    from nasdm_aug.data.store import PatchStore
    from nasdm_aug.metrics.inception import to_inception_input

    def features(path):
        store = PatchStore(path)
        images = torch.from_numpy(np.stack([store[i]["image"] for i in range(len(store))])).permute(0, 3, 1, 2)
        return _TinyFeatures()(to_inception_input(images)).double()

    with warnings.catch_warnings():  # 48 features of 6 and 8 patches: singular covariances, which scipy flags
        warnings.simplefilter("ignore", LinAlgWarning)
        return float(FIDMetric()(features(bank), features(real)))


def test_dry_run_prints_resolved_config(files):
    res = CliRunner().invoke(cli, ["evaluate", "--real", f"{files['real']}:Train", "--synthetic", str(files["bank"]),
                                   "--out", str(files["root"] / "x"), "--max-patches", "5", "--dry-run"])
    assert res.exit_code == 0, res.output
    cfg = json.loads(res.output)
    assert cfg["real_split"] == "Train" and cfg["max_patches"] == 5 and cfg["real"] == str(files["real"])
    assert not (files["root"] / "x").exists()


def test_evaluate_writes_report_with_fidelity_and_mask_checks(files):
    out = files["root"] / "report"
    args = ["evaluate", "--real", str(files["real"]), "--synthetic", str(files["bank"]), "--inception",
            str(files["feats"]), "--inception-sha256", file_digest(files["feats"], length=64), "--segmenter", str(files["hovernet"]), "--out", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} == {"metrics.json", "report.md", "config.json", "best_patches.png",
                                               "worst_patches.png", "stain_profile.png", "report.html"}
    md = (out / "report.md").read_text()
    # the page shows every table of report.md and both patch sheets, inlined
    page = check_self_contained((out / "report.html").read_text(), n_tables=sum(ln.startswith("|---") for ln in md.splitlines()), n_images=3)
    assert ["synthetic (bank.h5)", "6"] == page.tables[0][2][:2]
    if find_browser():
        check_in_browser(out / "report.html", n_tables=len(page.tables), n_images=3,
                         screenshot=files["root"] / "report-screenshot.png")
    m = json.loads((out / "metrics.json").read_text())
    assert m["real"]["n"] == 8 and m["synthetic"]["n"] == 6
    assert m["generative"]["fid"] == pytest.approx(_fid_by_hand(files["real"], files["bank"]), rel=1e-4)
    assert m["generative"]["is_kind"].startswith("clusters-")
    assert set(m["fidelity"]["comparison"]) >= {"dice", "boundary_f1", "type_accuracy/epithelial",
                                                "missing_rate/lymphocyte", "excess_rate"}
    mm = m["mask_model"]
    assert mm["n_generated"] == 4 and mm["type_control"]["epithelial"]["requested"] == 4
    assert mm["type_control"]["lymphocyte"]["requested"] == 0
    # the kept-apart shares of the generated masks, against the real store's own
    bank, real = PatchStore(files["bank"]), PatchStore(files["real"])
    gen = np.flatnonzero(bank.meta("parent") < 0)
    want_g = contact_statistics(bank.read(gen, keys=("inst",))["inst"])
    want_r = contact_statistics(real.read(np.arange(len(real)), keys=("inst",))["inst"])
    assert mm["contact"]["touching"]["generated"] == pytest.approx(want_g["touching"].mean())
    assert mm["contact"]["touching"]["real"] == pytest.approx(want_r["touching"].mean())
    assert mm["contact"]["clustered"]["real"] == pytest.approx((want_r["cluster"] >= 3).mean())
    # both sides paint nuclei and tissue in the same two colours: the same stain, ratio 1
    st = m["stain"]
    assert st["real"]["n"] == 8 and st["synthetic"]["n"] == 6
    assert st["ratio"]["contrast"] == pytest.approx(1.0, abs=1e-9) and st["ratio"]["nuclei"] == pytest.approx(1.0, abs=1e-9)
    assert st["real"]["contrast"] > 2  # (90, 50, 140) nuclei on (230, 180, 210) tissue
    assert json.loads([ln for ln in res.output.splitlines() if "; report in" in ln][-1].split("; report")[0])["stain_tissue_ratio"] == pytest.approx(1.0)
    blobs = st["off_mask_blobs"]  # the uniform tissue holds none on either side
    assert blobs["threshold"] == pytest.approx(nucleus_haematoxylin(real, np.arange(len(real))))
    assert (blobs["synthetic"], blobs["real"]) == (0.0, 0.0)
    summary = json.loads([ln for ln in res.output.splitlines() if "; report in" in ln][-1].split("; report")[0])
    assert (summary["off_mask_blobs"], summary["off_mask_blobs_real"]) == (0.0, 0.0)
    md = (out / "report.md").read_text()
    assert "| synthetic (bank.h5) | 6 |" in md and "Missing nuclei rate" in md
    assert "| Dark blobs off the mask nuclei, per patch |" in md
    assert "| Contrast (nuclei / that tissue) |" in md and "| Tissue more than 3 px from every nucleus |" in md and "![stain profile](stain_profile.png)" in md
    # a second run refuses to overwrite; the cached features are reused
    assert list(files["real"].parent.glob("real.h5.features-*.npz"))
    res = CliRunner().invoke(cli, args)
    assert res.exit_code != 0 and "--overwrite" in str(res.exception)


def test_bad_inputs_are_one_clear_line(files, tmp_path):
    base = ["evaluate", "--synthetic", str(files["bank"]), "--inception", str(files["feats"]),
            "--inception-sha256", file_digest(files["feats"], length=64), "--out", str(tmp_path / "o")]
    cases = [
        (["--real", str(tmp_path / "missing.h5")], "missing.h5: store not found"),
        (["--real", f"{files['real']}:Nope"], "Nope"),
        (["--real", f"{files['real']}:R1"], "need at least 2"),
        (["--real", str(files["real"]), "--inception", str(tmp_path / "none.pt")], "none.pt: file not found"),
    ]
    for extra, message in cases:
        res = CliRunner().invoke(cli, base + extra)
        assert res.exit_code != 0 and message in str(res.exception), (extra, res.exception)


def test_fidelity_with_oracle_segmenter_gives_ratio_one(files):
    from nasdm_aug.data.store import PatchStore

    real, bank = PatchStore(files["real"]), PatchStore(files["bank"])
    masks = {}
    for store in (real, bank):
        for i in range(len(store)):
            d = store[i]
            masks[d["image"].tobytes()] = (d["inst"], d["type"])

    def oracle(images):  # a perfect segmenter: returns each patch's own mask
        inst, typ = zip(*(masks[im.tobytes()] for im in images))
        return np.stack(inst), np.stack(typ)

    r = fidelity_metrics(oracle, real, np.arange(8), bank, np.arange(6), batch_size=4)
    assert r["synthetic"]["dice"] == 1.0 and r["synthetic"]["missing_rate"] == 0.0
    assert r["synthetic"]["detection_rate"] == 1.0 and r["real"]["detection_rate"] == 1.0
    assert all(s == 1.0 for s in r["scores"])
    ratios = [v["ratio"] for v in r["comparison"].values()]
    assert all(x == 1.0 or math.isnan(x) for x in ratios)


def test_detection_radius_follows_the_bank_magnification(files, monkeypatch):
    from nasdm_aug.data.store import PatchStore

    real, bank = PatchStore(files["real"]), PatchStore(files["bank"])

    def shifted(images):  # finds every nucleus 9 px to the side of its mask
        inst, typ = [], []
        for im in images:
            d = next(store[i] for store in (real, bank) for i in range(len(store))
                     if store[i]["image"].tobytes() == im.tobytes())
            i2, t2 = np.zeros_like(d["inst"]), np.zeros_like(d["type"])
            for k in np.unique(d["inst"])[1:]:
                ys, xs = np.nonzero(d["inst"] == k)
                t = d["type"][ys[0], xs[0]]
                xs = xs + 9 if xs.max() + 9 < SIZE else xs - 9
                i2[ys, xs], t2[ys, xs] = k, t
            inst.append(i2)
            typ.append(t2)
        return np.stack(inst), np.stack(typ)

    # 9 px is within hover_net's 12 px (40x, or magnification unknown) and beyond its 6 px at 20x
    rate = {}
    for mag in (None, 40.0, 20.0):
        monkeypatch.setattr(PatchStore, "magnification", property(lambda self, m=mag: m))
        rate[mag] = fidelity_metrics(shifted, real, np.arange(8), bank, np.arange(6))["synthetic"]["detection_rate"]
    assert rate[None] == rate[40.0] > 0.5 and rate[20.0] < rate[40.0]


def test_config_validation():
    with pytest.raises(ValueError, match="both real and synthetic"):
        EvaluateConfig(real="a.h5")
    with pytest.raises(ValueError, match="batch_size"):
        EvaluateConfig(real="a.h5", synthetic="b.h5", batch_size=0)


def test_feature_cache_is_keyed_and_reused(files, tmp_path):
    import shutil

    from nasdm_aug.data.store import PatchStore
    from nasdm_aug.metrics.generative import feature_cache_path, store_features
    from nasdm_aug.metrics.inception import InceptionExtractor

    path = tmp_path / "copy.h5"
    shutil.copy(files["real"], path)
    idx = np.arange(4)
    key = feature_cache_path(path, "Train", idx, "d1")
    assert key != feature_cache_path(path, "Test", idx, "d1") != feature_cache_path(path, "Train", idx[:3], "d1")
    assert key != feature_cache_path(path, "Train", idx, "d2")
    ex = InceptionExtractor(files["feats"], sha256=file_digest(files["feats"], length=64))
    store = PatchStore(path)
    first = store_features(store, idx, ex, "Train")
    assert feature_cache_path(path, "Train", idx, ex.digest).is_file()

    class Refuse(InceptionExtractor):
        def __call__(self, images, progress=False):
            raise AssertionError("features were recomputed instead of read from the cache")

    again = store_features(store, idx, Refuse(files["feats"], sha256=file_digest(files["feats"], length=64)), "Train")
    assert np.array_equal(first["features"], again["features"]) and again["probs"] is None
    before = feature_cache_path(path, "Train", idx, ex.digest)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a rewritten store has a new mtime
    assert feature_cache_path(path, "Train", idx, ex.digest) != before


def test_real_store_as_synthetic_has_no_generated_masks(files):
    from nasdm_aug.data.store import PatchStore
    from nasdm_aug.metrics.evaluate import mask_model_checks

    real, bank = PatchStore(files["real"]), PatchStore(files["bank"])
    assert mask_model_checks(real, np.arange(8), real, np.arange(8)) == {"n_generated": 0}
    checks = mask_model_checks(real, np.arange(8), bank, np.arange(6))
    assert checks["n_generated"] == 4
    # W1 between the nuclei counts per patch of the generated masks and of the real ones
    from scipy.stats import wasserstein_distance

    def n_nuclei(store, idx):
        return [len(np.unique(store[int(i)]["inst"][store[int(i)]["inst"] > 0])) for i in idx]

    generated = np.flatnonzero(bank.meta("parent")[:6] < 0)
    assert checks["realism"]["count"] == pytest.approx(
        wasserstein_distance(n_nuclei(bank, generated), n_nuclei(real, np.arange(8))))
