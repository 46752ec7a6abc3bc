"""Generative metrics on Inception features: FID (Heusel et al., 2017), KID (Binkowski et al., 2018)
and IS (Salimans et al., 2016), the image-quality columns of NASDM's Table 1, plus per-store caching.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from monai.metrics import FIDMetric
from scipy.cluster.vq import kmeans2

from nasdm_aug.metrics.inception import InceptionExtractor
from nasdm_aug.utils import atomic_output

__all__ = ["frechet_distance", "kernel_inception_distance", "inception_score", "cluster_probabilities",
           "feature_cache_path", "store_features"]


def _check_features(*arrays: np.ndarray) -> None:
    dims = {a.shape[1] if a.ndim == 2 else None for a in arrays}
    if None in dims or len(dims) != 1:
        raise ValueError(f"expected feature arrays [N, D] of one D, got shapes {[a.shape for a in arrays]}")
    if min(len(a) for a in arrays) < 2:
        raise ValueError(f"need at least 2 samples per set, got {[len(a) for a in arrays]}")


def _common_subspace(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact coordinates of both sets in the affine span of all their points.

    FID is invariant to rotations and blind to directions where every point agrees, so with
    N + M - 1 < D it is unchanged in the (N + M - 1)-dim span; MONAI then needs a small ``sqrtm``
    instead of a 2048 x 2048 one (tens of seconds on two CPU cores).
    """
    centre = np.concatenate([a, b]).mean(0)
    q, _ = np.linalg.qr(np.concatenate([a, b]).T - centre[:, None])  # [D, N + M], orthonormal columns
    return (a - centre) @ q, (b - centre) @ q


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two feature sets, with MONAI's :class:`FIDMetric` computing the distance.

    Args:
        features_a: [N, D] features of one image set (e.g. synthetic).
        features_b: [M, D] features of the other (e.g. real).

    Returns:
        ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))``.
    """
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    _check_features(a, b)
    if len(a) + len(b) - 1 < a.shape[1]:
        a, b = _common_subspace(a, b)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # scipy's sqrtm on a singular product
            fid = float(FIDMetric()(torch.from_numpy(a), torch.from_numpy(b)))
    except ValueError:
        # MONAI rejects the complex sqrtm of a singular S_a S_b (few samples, rank-deficient
        # covariances); the exact low-rank form below needs no matrix square root.
        fid = _frechet_low_rank(a, b)
    return max(0.0, fid)


def _frechet_low_rank(a: np.ndarray, b: np.ndarray) -> float:
    """FID with Tr((S_a S_b)^(1/2)) = nuclear norm of X_a^T X_b, where S = X X^T, X = centred / sqrt(n - 1).

    The nonzero eigenvalues of X_a X_a^T X_b X_b^T are the squared singular values of X_a^T X_b.
    """
    xa = (a - a.mean(0)) / math.sqrt(len(a) - 1)
    xb = (b - b.mean(0)) / math.sqrt(len(b) - 1)
    tr_cross = np.linalg.svd(xa @ xb.T, compute_uv=False).sum()
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + (xa * xa).sum() + (xb * xb).sum() - 2 * tr_cross)


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel ``(x.y / d + 1)^3`` (Eq. 3 of Binkowski et al.)."""
    d, m, n = x.shape[1], len(x), len(y)
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def kernel_inception_distance(features_a: np.ndarray, features_b: np.ndarray, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> dict[str, float]:
    """KID: unbiased polynomial-kernel MMD^2 averaged over random subsets (as torch-fidelity).

    Args:
        features_a: [N, D]; features_b: [M, D].
        subsets: number of random subset pairs.
        subset_size: samples per subset (capped at ``min(N, M)``).
        seed: subset sampling seed.

    Returns:
        dict with ``mean`` and ``std`` over subsets (the unbiased estimate can be slightly < 0).
    """
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    _check_features(a, b)
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    size = min(int(subset_size), len(a), len(b))
    rng = np.random.default_rng(seed)
    vals = [_mmd2_unbiased(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)])
            for _ in range(subsets)]
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals))}


def inception_score(probs: np.ndarray, splits: int = 10) -> dict[str, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))), mean and std over ``splits`` chunks (Salimans et al., 2016).

    Args:
        probs: [N, K] class probabilities (rows sum to 1).
        splits: number of chunks (capped at N).

    Returns:
        dict with ``mean`` and ``std``; 1 for identical images, K for confident uniform classes.
    """
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or len(p) == 0:
        raise ValueError(f"expected probabilities [N, K], got shape {p.shape}")
    scores = []
    for chunk in np.array_split(p, min(int(splits), len(p))):
        marginal = chunk.mean(0, keepdims=True)
        kl = np.where(chunk > 0, chunk * (np.log(np.maximum(chunk, 1e-30)) - np.log(np.maximum(marginal, 1e-30))), 0)
        scores.append(math.exp(kl.sum(1).mean()))
    return {"mean": float(np.mean(scores)), "std": float(np.std(scores))}


def cluster_probabilities(features: np.ndarray, reference: np.ndarray, n_clusters: int = 10,
                          seed: int = 0) -> np.ndarray:
    """One-hot pseudo-class probabilities: nearest k-means centroid of the reference features.

    The packaged Inception file stops at pool3 (no ImageNet head), so IS is derived from
    pseudo-classes found in the real data; with hard assignments IS becomes exp(H(p(y))), the
    effective number of real-data clusters covered (1 to ``n_clusters``). Not comparable to
    ImageNet-IS numbers in papers.

    Args:
        features: [N, D] features to assign; reference: [M, D] features to cluster.
        n_clusters: number of clusters (capped at M).
        seed: k-means seed.

    Returns:
        float [N, n_clusters] one-hot rows.
    """
    k = max(1, min(int(n_clusters), len(reference)))
    centroids, _ = kmeans2(np.asarray(reference, np.float64), k, minit="++", seed=seed)
    d2 = ((features[:, None, :] - centroids[None]) ** 2).sum(-1)
    return np.eye(k)[d2.argmin(1)]


def _device_key(device: torch.device | str) -> str:
    """What of the device changes Inception features: its type, and on CUDA whether matmuls and
    convolutions may run in TF32 (10-bit mantissas), so features cached on one device are never
    compared with another's."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    return (f"cuda matmul_tf32={torch.backends.cuda.matmul.allow_tf32} "
            f"cudnn_tf32={torch.backends.cudnn.allow_tf32}")


def feature_cache_path(store_path: str | os.PathLike, split: str | None, indices: np.ndarray,
                       digest: str, device: torch.device | str = "cpu") -> Path:
    """Cache file beside a store, keyed by its path, mtime, size, split, patch indices, extractor
    and the device the features are computed on (its type and, on CUDA, the TF32 settings)."""
    path = Path(store_path).resolve()
    st = path.stat()
    key = json.dumps([str(path), st.st_mtime_ns, st.st_size, split or "",
                      hashlib.sha1(np.ascontiguousarray(indices, np.int64).tobytes()).hexdigest(), digest,
                      _device_key(device)])
    return path.with_name(f"{path.name}.features-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz")


def store_features(store, indices: np.ndarray, extractor: InceptionExtractor, split: str | None = None,
                   cache: bool = True, batch: int = 64, progress: bool = False) -> dict[str, np.ndarray | None]:
    """Inception features of ``store``'s patches ``indices``, read from / written to a cache file.

    A cache write that fails (read-only data folder) is skipped: the features are still returned.

    Args:
        store: an open :class:`~nasdm_aug.data.store.PatchStore`.
        indices: int [N] patch indices.
        extractor: the feature extractor.
        split: the split the indices came from (part of the cache key only).
        cache: read and write the cache.
        batch: patches read from the store at a time.
        progress: show a tqdm bar.

    Returns:
        dict with ``features`` [N, D] and ``probs`` [N, K] or None.
    """
    indices = np.asarray(indices, np.int64)
    path = feature_cache_path(store.path, split, indices, extractor.digest, extractor.device) if cache else None
    if path is not None and path.is_file():
        with np.load(path) as z:
            return {"features": z["features"], "probs": z["probs"] if "probs" in z else None}
    parts = [extractor(store.read(indices[s:s + batch], keys=("image",))["image"], progress=progress)
             for s in range(0, len(indices), batch)]
    feats = np.concatenate([p["features"] for p in parts]) if parts else np.zeros((0, 0))
    probs = np.concatenate([p["probs"] for p in parts]) if parts and parts[0]["probs"] is not None else None
    if path is not None:
        _write_cache(path, feats, probs)
    return {"features": feats, "probs": probs}


def _write_cache(path: Path, features: np.ndarray, probs: np.ndarray | None) -> None:
    arrays = {"features": features} if probs is None else {"features": features, "probs": probs}
    try:
        with atomic_output(path, overwrite=True) as tmp:
            with open(tmp, "wb") as f:  # a file object, so np.savez keeps the temporary name
                np.savez(f, **arrays)
    except OSError:
        pass  # read-only folder beside the store: caching is an optimisation, not a requirement
