"""RandSyntheticSwapd: dictionary twin of RandSyntheticSwap for MONAI pipelines.

Swaps a real sample's image for the NASDM synthetic image of its own mask (paper Sec. 4.3.4),
one random draw per sample shared by every image key, like MONAI's MixUpd.
"""

from __future__ import annotations

import os
from typing import Any, Hashable, Mapping

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

from nasdm_aug.data.store import PatchStore
from nasdm_aug.mixing.array import PatchGenerator, RandSyntheticSwap

__all__ = ["RandSyntheticSwapd", "RandSyntheticSwapD", "RandSyntheticSwapDict"]


class RandSyntheticSwapd(RandomizableTransform, MapTransform):
    """With probability ``prob``, replace ``keys`` by the synthetic image of the sample's mask.

    Reads the real patch index from ``parent_key`` (``"index"`` for ``SyntheticMixDataset``
    items) and, for a generator, the masks from ``inst_key`` / ``type_key``. Samples whose
    ``origin_key`` is ``"synthetic"`` are left alone (their index points into the bank). Records
    the outcome as a bool under ``swap_key`` (None to skip), so a batch says which images changed.
    Put it before spatial transforms (see ``RandSyntheticSwap``).

    Args:
        keys: image keys to swap (all get the same synthetic patch).
        bank: synthetic PatchStore or path, or None.
        prob: probability of a swap per sample.
        parent_key: key of the sample's real patch index.
        inst_key: key of the instance map (generator only).
        type_key: key of the type map (generator only).
        origin_key: key of the origin string; samples marked ``"synthetic"`` are never swapped.
        swap_key: key that receives True / False, or None.
        generator: an object with ``generate_patches`` (see ``PatchGenerator``), or None.
        generator_kwargs: extra keyword arguments for ``generate_patches`` (sampling, guidance, seed).
        cache_size: LRU cache size for generated images.
        on_missing: ``"keep"`` or ``"error"`` when no synthetic image exists.
        allow_missing_keys: do not raise when a key is absent.
    """

    backend = RandSyntheticSwap.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        bank: PatchStore | str | os.PathLike | None = None,
        prob: float = 0.5,
        parent_key: str = "index",
        inst_key: str = "inst",
        type_key: str = "type",
        origin_key: str = "origin",
        swap_key: str | None = "swapped",
        generator: PatchGenerator | None = None,
        cache_size: int = 128,
        on_missing: str = "keep",
        generator_kwargs: dict[str, Any] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.swapper = RandSyntheticSwap(bank, prob=prob, generator=generator, cache_size=cache_size,
                                         on_missing=on_missing, generator_kwargs=generator_kwargs)
        self.parent_key, self.inst_key, self.type_key = parent_key, inst_key, type_key
        self.origin_key, self.swap_key = origin_key, swap_key

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> "RandSyntheticSwapd":
        super().set_random_state(seed, state)
        self.swapper.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        # one draw per sample, shared by every key (MONAI MixUpd pattern)
        self.swapper.randomize(None)
        synthetic = None
        if self.swapper._do_transform and d.get(self.origin_key, "real") != "synthetic":
            parent = int(d[self.parent_key])
            if parent >= 0:
                synthetic = self.swapper.lookup(parent, d.get(self.inst_key), d.get(self.type_key))
        if synthetic is not None:
            for key in self.key_iterator(d):
                d[key] = self.swapper.apply(d[key], synthetic)
        if self.swap_key is not None:
            d[self.swap_key] = synthetic is not None
        return d


RandSyntheticSwapD = RandSyntheticSwapDict = RandSyntheticSwapd
