"""H&E stain jitter of HoVerNet's training data: exact identity when off, the stain densities it was
asked for (read back by scikit-image's own deconvolution), labels untouched, seeded draws, and the
option through config, CLI and the studies' fingerprints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from skimage.color import hed2rgb, rgb2hed

from cli.main import cli
from hovernet.config import HoVerNetConfig, get_hovernet_preset
from hovernet.data import HoVerNetTrainDataset, RandHEDJitterd, build_augmentation
from nasdm_aug.studies.config import study_config
from nasdm_aug.studies.plan import hovernet_config, protocol


def _stained(h: np.ndarray, e: np.ndarray) -> torch.Tensor:
    """A float RGB image [3, H, W] of haematoxylin ``h`` and eosin ``e`` densities (no DAB)."""
    rgb = hed2rgb(np.stack([h, e, np.zeros_like(h)], -1))
    return torch.tensor(rgb, dtype=torch.float32).permute(2, 0, 1)


@pytest.fixture
def image() -> torch.Tensor:
    rng = np.random.default_rng(0)
    return _stained(rng.uniform(0.005, 0.06, (16, 16)), rng.uniform(0.005, 0.04, (16, 16)))


def test_no_jitter_returns_the_image_to_the_bit(image):
    t = RandHEDJitterd("image", prob=1.0, scale=0.0, shift=0.0)
    t.set_random_state(0)
    assert torch.equal(t({"image": image})["image"], image)


def test_stain_densities_become_a_s_plus_b(image):
    t = RandHEDJitterd("image", prob=1.0, scale=0.3, shift=0.01)
    t.set_random_state(3)
    out = t({"image": image})["image"]
    (a_h, a_e), (b_h, b_e) = t._a, t._b
    assert not np.allclose([a_h, a_e], 1.0) and not np.allclose([b_h, b_e], 0.0)
    before = rgb2hed(image.permute(1, 2, 0).double().numpy())
    after = rgb2hed(out.permute(1, 2, 0).double().numpy())
    inside = (out > 1e-4).all(0).numpy() & (out < 1 - 1e-4).all(0).numpy()  # not clipped by [0, 1]
    assert inside.mean() > 0.9
    np.testing.assert_allclose(after[..., 0][inside], (a_h * before[..., 0] + b_h)[inside], atol=2e-5)
    np.testing.assert_allclose(after[..., 1][inside], (a_e * before[..., 1] + b_e)[inside], atol=2e-5)
    np.testing.assert_allclose(after[..., 2][inside], before[..., 2][inside], atol=2e-5)  # DAB unchanged


def test_draws_are_seeded_and_prob_zero_is_off(image):
    outs = []
    for _ in range(2):
        t = RandHEDJitterd("image", prob=1.0, scale=0.2, shift=0.01)
        t.set_random_state(7)
        outs.append(t({"image": image})["image"])
    assert torch.equal(outs[0], outs[1])
    off = RandHEDJitterd("image", prob=0.0, scale=0.2, shift=0.01)
    assert torch.equal(off({"image": image})["image"], image)
    with pytest.raises(ValueError, match="scale"):
        RandHEDJitterd("image", scale=1.0)
    with pytest.raises(ValueError, match="shift"):
        RandHEDJitterd("image", shift=-0.1)


def test_augmentation_holds_the_jitter_only_when_asked():
    names = lambda c: [type(x).__name__ for x in c.transforms]  # noqa: E731
    assert "RandHEDJitterd" not in names(build_augmentation())
    assert names(build_augmentation(0.2, 0.01))[-1] == "RandHEDJitterd"
    assert names(build_augmentation(0.0, 0.01))[-1] == "RandHEDJitterd"


class _Items(torch.utils.data.Dataset):
    def __init__(self, image: torch.Tensor) -> None:
        self.image = image
        self.inst = torch.zeros(16, 16, dtype=torch.int32)
        self.inst[4:9, 4:9], self.inst[10:14, 9:15] = 1, 2

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> dict:
        return {"image": self.image, "inst": self.inst, "type": (self.inst > 0).to(torch.int32) * 2}


def test_training_items_change_colour_not_labels(image):
    plain = HoVerNetTrainDataset(_Items(image), augment=True, seed=0)
    jittered = HoVerNetTrainDataset(_Items(image), augment=True, seed=0, hed_scale=0.3, hed_shift=0.01)
    changed = 0
    for i in range(len(plain)):
        a, b = plain[i], jittered[i]
        for k in ("np", "hv", "nc"):  # the same flips and rotations: the same targets
            assert torch.equal(a[k], b[k])
        changed += not torch.equal(a["image"], b["image"])
    assert changed >= 1


def test_config_validates_and_old_configs_load_without_it():
    with pytest.raises(ValueError, match="hed_scale"):
        HoVerNetConfig(hed_scale=1.0)
    with pytest.raises(ValueError, match="hed_shift"):
        HoVerNetConfig(hed_shift=-0.01)
    old = get_hovernet_preset("tiny").to_dict()
    del old["hed_scale"], old["hed_shift"]
    cfg = HoVerNetConfig.from_dict(old)
    assert cfg.hed_scale == 0.0 and cfg.hed_shift == 0.0


def test_cli_option_reaches_the_config_and_refuses_bad_values(tmp_path):
    runner = CliRunner()
    base = ["hovernet", "train", "--train", str(tmp_path / "x.h5"), "--out", str(tmp_path / "hv"), "--dry-run"]
    res = runner.invoke(cli, [*base, "--hed-jitter", "0.2,0.01"])
    assert res.exit_code == 0, res.output
    cfg = json.loads(res.output)
    assert cfg["hed_scale"] == 0.2 and cfg["hed_shift"] == 0.01
    assert json.loads(runner.invoke(cli, base).output)["hed_scale"] == 0.0
    for bad, why in (("1.5,0", "SCALE must lie in [0, 1)"), ("0.2", "expected SCALE,SHIFT"), ("a,b", "expected SCALE,SHIFT")):
        res = runner.invoke(cli, [*base, "--hed-jitter", bad])
        assert res.exit_code == 2 and why in res.output and "Traceback" not in res.output


def test_studies_pass_it_to_every_run_and_keep_old_fingerprints(tmp_path):
    from nasdm_aug.studies.fingerprint import run_fingerprint
    from nasdm_aug.studies.registry import select_rows

    off = study_config("demo")
    on = study_config("demo", hed_jitter="0.2,0.01")
    assert on.hed_jitter == (0.2, 0.01)
    cfg = hovernet_config(on, 3)
    assert (cfg.hed_scale, cfg.hed_shift, cfg.seed) == (0.2, 0.01, 3)
    assert "stain jitter (scale 0.2, shift 0.01)" in protocol(on, None)
    assert "stain jitter" not in protocol(off, None)

    class _Store:  # run_fingerprint reads a store's path for its identity only
        path = tmp_path / "s.h5"

    _Store.path.write_bytes(b"x")
    row = select_rows("real-vs-synthetic", off)[0]
    fp_off = run_fingerprint(row, 0, _Store(), None, off)
    fp_on = run_fingerprint(row, 0, _Store(), None, on)
    assert "hed_scale" not in fp_off["hovernet"]  # as before the option existed
    assert fp_on["hovernet"]["hed_scale"] == 0.2 and fp_on["hovernet"]["hed_shift"] == 0.01
    with pytest.raises(Exception, match="hed_jitter"):
        study_config("demo", hed_jitter="1.2,0")


def test_resume_of_a_run_made_before_the_option(tmp_path):
    """A run whose config.json predates the option resumes as it was, and refuses the jitter by name."""
    from nasdm_aug.training.run_dir import resumed_config
    from nasdm_aug.utils import InputError

    old = get_hovernet_preset("tiny").to_dict()
    del old["hed_scale"], old["hed_shift"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    same = resumed_config(tmp_path, get_hovernet_preset("tiny"), HoVerNetConfig, True)
    assert same.hed_scale == 0.0 and same.hed_shift == 0.0
    with pytest.raises(InputError, match="hed_scale"):
        resumed_config(tmp_path, get_hovernet_preset("tiny").replace(hed_scale=0.2), HoVerNetConfig, True)
