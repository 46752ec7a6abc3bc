"""HoVerNet training data: HoVerNet's standard augmentation (flips, 90-degree rotations, colour
jitter) as MONAI dict transforms, optional H&E stain jitter, and a Dataset wrapper that adds
np/hv/nc targets afterwards.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Hashable, Iterator, Mapping

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (
    Compose, MapTransform, RandAdjustContrastd, RandFlipd, RandomizableTransform, RandRotate90d, RandScaleIntensityd,
)
from torch.utils.data import Dataset

from hovernet.targets import as_label_map, compute_targets

from nasdm_aug.utils import InputError

__all__ = ["RandSaturationd", "RandHEDJitterd", "build_augmentation", "HoVerNetTrainDataset", "store_dataset"]

_LABELS = ("image", "inst", "type")


class RandSaturationd(RandomizableTransform, MapTransform):
    """Scale colour saturation of an RGB image [3, H, W] by a factor in [1 - s, 1 + s].

    MONAI has brightness and contrast jitter but no saturation jitter, which H&E stain
    variation needs most (HoVerNet jitters hue, saturation, contrast and brightness).

    Args:
        keys: image keys.
        prob: probability of jittering.
        strength: s above.
    """

    def __init__(self, keys: Any, prob: float = 0.5, strength: float = 0.2) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.strength = strength
        self._factor = 1.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._factor = float(self.R.uniform(1.0 - self.strength, 1.0 + self.strength))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            img = torch.as_tensor(d[key], dtype=torch.float32)
            grey = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]
            d[key] = (grey + self._factor * (img - grey)).clamp(0.0, 1.0)
        return d


def _hed_matrices() -> tuple[torch.Tensor, torch.Tensor]:
    from skimage.color.colorconv import hed_from_rgb, rgb_from_hed

    return torch.tensor(hed_from_rgb, dtype=torch.float32), torch.tensor(rgb_from_hed, dtype=torch.float32)


# scikit-image's optical-density scale: rgb2hed divides -log(rgb) by -log(1e-6)
_OD_SCALE = float(-np.log(1e-6))


class RandHEDJitterd(RandomizableTransform, MapTransform):
    """Jitter the haematoxylin and eosin stain of an RGB image [3, H, W] in [0, 1] (HED augmentation).

    The image is split into H, E and DAB optical densities by colour deconvolution (Ruifrok &
    Johnston's matrix, scikit-image's ``rgb2hed``); H and E each become ``a * s + b``, with
    ``a ~ U(1 - scale, 1 + scale)`` and ``b ~ U(-shift, shift)`` drawn per stain, and the image is
    recombined. Only the change of density is applied, so ``scale = shift = 0`` returns the image
    unchanged to the bit (a full round trip through ``rgb2hed`` / ``hed2rgb`` would not: it clips
    negative densities). ``shift`` is in ``rgb2hed``'s units: real CoNSeP nuclei read about 0.045,
    the tissue between them about 0.013.

    MONAI has stain normalisation (``NormalizeHEStains``) but no random stain jitter. Tellez et
    al. (2019, "Quantifying the effects of data augmentation and stain color normalization in
    convolutional neural networks for computational pathology") found colour augmentation in HSV or
    HED space, more than stain normalisation, let networks trained on one centre's stain work on
    others'; here it keeps a HoVerNet trained on synthetic patches from learning the generator's own
    stain balance.

    Args:
        keys: image keys.
        prob: probability of jittering.
        scale: ``scale`` above, in [0, 1).
        shift: ``shift`` above, >= 0.
    """

    def __init__(self, keys: Any, prob: float = 0.5, scale: float = 0.2, shift: float = 0.01) -> None:
        if not 0.0 <= scale < 1.0 or shift < 0.0:
            raise ValueError(f"HED jitter needs 0 <= scale < 1 and shift >= 0, got scale {scale}, shift {shift}")
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.scale, self.shift = scale, shift
        self._a = np.ones(2)
        self._b = np.zeros(2)
        self._to_hed, self._to_rgb = _hed_matrices()

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._a = self.R.uniform(1.0 - self.scale, 1.0 + self.scale, 2)
        self._b = self.R.uniform(-self.shift, self.shift, 2)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        a = torch.tensor(self._a - 1.0, dtype=torch.float32)
        b = torch.tensor(self._b, dtype=torch.float32)
        for key in self.key_iterator(d):
            img = torch.as_tensor(d[key], dtype=torch.float32)
            rgb = img.permute(1, 2, 0).clamp_min(1e-6)
            hed = (torch.log(rgb) / -_OD_SCALE) @ self._to_hed  # rgb2hed before its clipping
            delta = torch.zeros_like(hed)
            delta[..., :2] = hed[..., :2].clamp_min(0.0) * a + b
            # new = exp(-(hed + delta) * scale @ M) = old * exp(-delta * scale @ M)
            out = rgb * torch.exp(-(delta * _OD_SCALE) @ self._to_rgb)
            d[key] = out.clamp(0.0, 1.0).permute(2, 0, 1).contiguous()
        return d


def build_augmentation(hed_scale: float = 0.0, hed_shift: float = 0.0) -> Compose:
    """Flips on both axes, a random multiple of 90 degrees, brightness, contrast and saturation jitter,
    and where ``hed_scale`` or ``hed_shift`` is set, :class:`RandHEDJitterd` (probability 0.5).

    Spatial transforms act on ``image``, ``inst`` and ``type`` together (nearest by nature: flips
    and rotations by 90 degrees never interpolate), so labels stay aligned.
    """
    transforms = [
        RandFlipd(_LABELS, prob=0.5, spatial_axis=0),
        RandFlipd(_LABELS, prob=0.5, spatial_axis=1),
        RandRotate90d(_LABELS, prob=0.75, max_k=3),
        RandScaleIntensityd("image", factors=0.1, prob=0.5),  # brightness: x (1 + f)
        RandAdjustContrastd("image", prob=0.5, gamma=(0.8, 1.25)),
        RandSaturationd("image", prob=0.5, strength=0.2),
    ]
    if hed_scale or hed_shift:
        transforms.append(RandHEDJitterd("image", prob=0.5, scale=hed_scale, shift=hed_shift))
    return Compose(transforms)


@contextmanager
def _plain_tensors() -> Iterator[None]:
    """MONAI transforms return plain tensors inside (MONAI's ``set_track_meta(False)``, restored after).

    The training items need no metadata or inverse record: without them a 64-px item's flips,
    rotations and jitter took 2.0 ms instead of 8.3 (benchmarks/RESULTS.md, HoVerNet training).
    """
    before = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(before)


def _item_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class HoVerNetTrainDataset(Dataset):
    """Wrap any dataset of MONAI dicts into HoVerNet training items.

    Base items hold ``image`` float [3, H, W] in [0, 1] and ``inst`` / ``type`` maps [H, W] or
    [1, H, W] (``SyntheticMixDataset`` items fit). Augmentation is seeded by (seed, epoch,
    index), so an item is the same whatever the worker, rank or resume point.

    Args:
        base: the dataset.
        augment: apply :func:`build_augmentation`.
        seed: base seed.
        hed_scale, hed_shift: :class:`RandHEDJitterd`'s, added to the augmentation where either is
            set (0, 0: none, the default).

    Items: ``image`` float [3, H, W], ``np`` long [H, W], ``hv`` float [2, H, W], ``nc`` long [H, W].
    """

    def __init__(self, base: Dataset, augment: bool = True, seed: int = 0, *, hed_scale: float = 0.0,
                 hed_shift: float = 0.0) -> None:
        self.base, self.augment, self.seed, self.epoch = base, augment, seed, 0
        self._aug = build_augmentation(hed_scale, hed_shift) if augment else None

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call before each epoch's DataLoader pass)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.base[index]
        d = {"image": _image(item, index), "inst": as_label_map(item["inst"], "inst")[None],
             "type": as_label_map(item["type"], "type")[None]}
        if self._aug is not None:
            self._aug.set_random_state(seed=_item_seed(self.seed, self.epoch, index))
            with _plain_tensors():
                d = self._aug(d)
        image = torch.as_tensor(np.asarray(d["image"]), dtype=torch.float32).clamp(0.0, 1.0)
        return {"image": image, **compute_targets(np.asarray(d["inst"]), np.asarray(d["type"]))}


def _image(item: Mapping[str, Any], index: int) -> torch.Tensor:
    img = torch.as_tensor(np.asarray(item["image"]))
    if img.ndim != 3 or img.shape[0] != 3 or not img.is_floating_point():
        raise ValueError(f"item {index}: expected image float [3, H, W] in [0, 1], got {img.dtype} {tuple(img.shape)}")
    return img.float()


def store_dataset(path: str | os.PathLike, split: str | None) -> Dataset:
    """Real patches of one split of a PatchStore as MONAI dicts (``SyntheticMixDataset`` in "real" mode).

    Raises:
        InputError: the store is unreadable or the split is unknown or empty.
    """
    from nasdm_aug.mixing import SyntheticMixDataset

    if not os.path.isfile(path):
        raise InputError(f"{path}: store not found")
    return SyntheticMixDataset(path, split=split, mode="real", ratio=1.0)
