"""RandSyntheticSwap: replace a real patch's image by a NASDM synthetic one made from its own mask.

The per-sample form of the paper's replacement study (Sec. 4.3.4): the labels stay, the image
comes from a synthetic bank (by parent index) or from a live generator with an LRU cache.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Protocol

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type

from nasdm_aug.data.store import PatchStore
from nasdm_aug.mixing.plan import group_by_parent

__all__ = ["RandSyntheticSwap", "PatchGenerator"]

MISSING = ("keep", "error")


class PatchGenerator(Protocol):
    """What ``RandSyntheticSwap`` needs of a live generator: ``NASDMGenerator`` fits.

    ``generate_patches(inst int32 [n, H, W], type_map uint8 [n, H, W], **kwargs)`` returns uint8
    [n, H, W, 3] images (float [n, 3, H, W] in [-1, 1], numpy or torch, is accepted too).
    """

    def generate_patches(self, inst: np.ndarray, type_map: np.ndarray, **kwargs: Any) -> Any: ...


class RandSyntheticSwap(RandomizableTransform):
    """With probability ``prob``, return the synthetic image made from the sample's own mask.

    The synthetic image comes from ``bank`` (a synthetic PatchStore; the patch whose ``parent``
    equals the sample's real index, one drawn at random when there are several) or, when the bank
    has none or no bank is given, from ``generator`` (see ``PatchGenerator``), whose outputs are
    kept in an LRU cache of ``cache_size`` images per process. The generator is called with
    ``sample_offset=parent`` plus ``generator_kwargs`` (e.g. ``sampling``, ``guidance``, ``seed``),
    so the image made for a mask depends only on the generator seed and the real index, as in
    ``nasdm-aug synthesize``; only the decision to swap uses ``self.R``.

    The image must be channel-first [3, H, W]: a floating image is taken as [0, 1] and gets the
    synthetic patch / 255, an integer image gets it as uint8 values. The output keeps the input's
    type (numpy or torch) and dtype. Place the swap before any spatial transform: the synthetic
    patch matches the stored mask, not a flipped one (a MetaTensor with applied operations is
    refused).

    Args:
        bank: the synthetic PatchStore (or its path), or None.
        prob: probability of a swap.
        generator: an object with ``generate_patches`` (see ``PatchGenerator``), or None.
        generator_kwargs: extra keyword arguments for ``generate_patches``.
        cache_size: LRU cache size for generated images.
        on_missing: ``"keep"`` returns the image unchanged when no synthetic image exists;
            ``"error"`` raises ``KeyError``.

    Raises:
        ValueError: neither ``bank`` nor ``generator``, or a bad ``on_missing`` / ``cache_size``.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        bank: PatchStore | str | os.PathLike | None = None,
        prob: float = 0.5,
        generator: PatchGenerator | None = None,
        cache_size: int = 128,
        on_missing: str = "keep",
        generator_kwargs: dict[str, Any] | None = None,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if bank is None and generator is None:
            raise ValueError("RandSyntheticSwap needs a synthetic bank or a generator")
        if on_missing not in MISSING:
            raise ValueError(f"on_missing must be one of {MISSING}, got {on_missing!r}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.bank = bank if bank is None or isinstance(bank, PatchStore) else PatchStore(bank)
        self.generator = generator
        self.generator_kwargs = dict(generator_kwargs or {})
        self.cache_size = int(cache_size)
        self.on_missing = on_missing
        self._by_parent: dict[int, np.ndarray] | None = None
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._pick = 0.0

    def randomize(self, data: Any = None) -> None:
        """Draw whether to swap and which bank candidate to take (both always drawn, so the
        random stream does not depend on the data)."""
        super().randomize(None)
        self._pick = float(self.R.rand())

    def __call__(
        self, img: Any, parent: int, inst: Any = None, type: Any = None, randomize: bool = True
    ) -> Any:
        """Swap ``img`` [3, H, W] for the synthetic image of real patch ``parent`` (with prob).

        Args:
            img: the image, channel-first [3, H, W], numpy or torch.
            parent: index of the sample's real patch (the bank's ``parent`` key); < 0 never swaps.
            inst: the sample's instance map [H, W] or [1, H, W] (needed only by the generator).
            type: the sample's type map [H, W] or [1, H, W] (needed only by the generator).
            randomize: draw a new decision first; False reuses the last draw (dictionary twin).
        """
        if randomize:
            self.randomize()
        if not self._do_transform or int(parent) < 0:
            return img
        synthetic = self.lookup(int(parent), inst, type)
        return img if synthetic is None else self.apply(img, synthetic)

    # -- pieces the dictionary transform reuses ---------------------------------------------------
    def lookup(self, parent: int, inst: Any = None, type: Any = None) -> np.ndarray | None:
        """The synthetic image uint8 [H, W, 3] for real patch ``parent`` under the last draw, or None.

        Raises:
            KeyError: none exists and ``on_missing == "error"``.
        """
        image = self._from_bank(parent)
        if image is None and self.generator is not None and inst is not None and type is not None:
            image = self._from_generator(parent, inst, type)
        if image is None and self.on_missing == "error":
            where = f"bank {self.bank.path}" if self.bank is not None else "the generator (no masks given)"
            raise KeyError(f"no synthetic patch for real patch {parent} in {where}")
        return image

    @staticmethod
    def apply(img: Any, synthetic: np.ndarray) -> Any:
        """Return ``synthetic`` uint8 [H, W, 3] in the layout, scale and type of ``img`` [3, H, W]."""
        if isinstance(img, MetaTensor) and img.applied_operations:
            ops = [op.get("class") for op in img.applied_operations]
            raise ValueError(f"RandSyntheticSwap must run before spatial transforms; the image has {ops} "
                             "applied, so the synthetic patch would not align with the labels")
        shape = tuple(img.shape)
        if shape != (synthetic.shape[2], *synthetic.shape[:2]):
            raise ValueError(f"expected a channel-first image of shape {(3, *synthetic.shape[:2])}, got {shape}")
        out = synthetic.transpose(2, 0, 1)
        floating = torch.is_floating_point(img) if isinstance(img, torch.Tensor) else np.issubdtype(img.dtype, np.floating)
        out = out.astype(np.float32) / 255.0 if floating else np.ascontiguousarray(out)
        return convert_to_dst_type(out, dst=img)[0]

    # -- sources ------------------------------------------------------------------------------------
    def _from_bank(self, parent: int) -> np.ndarray | None:
        if self.bank is None:
            return None
        if self._by_parent is None:
            self._by_parent = group_by_parent(self.bank)
        options = self._by_parent.get(parent)
        if options is None:
            return None
        choice = options[min(int(self._pick * len(options)), len(options) - 1)]
        return self.bank[int(choice)]["image"]

    def _from_generator(self, parent: int, inst: Any, type: Any) -> np.ndarray:
        if parent in self._cache:
            self._cache.move_to_end(parent)
            return self._cache[parent]
        kwargs = {"sample_offset": parent, **self.generator_kwargs}
        images = self.generator.generate_patches(_plane(inst, np.int32)[None], _plane(type, np.uint8)[None], **kwargs)
        image = _to_uint8_hwc(images)[0]
        if self.cache_size:
            self._cache[parent] = image
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return image


def _plane(x: Any, dtype: type) -> np.ndarray:
    """A label map as numpy [H, W] (a leading channel of 1 is dropped)."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"expected a label map [H, W] or [1, H, W], got shape {a.shape}")
    return a.astype(dtype, copy=False)


def _to_uint8_hwc(images: Any) -> np.ndarray:
    """Generator output to uint8 [N, H, W, 3]: accepts that or float [N, 3, H, W] in [-1, 1]."""
    a = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if a.dtype == np.uint8 and a.ndim == 4 and a.shape[-1] == 3:
        return a
    if np.issubdtype(a.dtype, np.floating) and a.ndim == 4 and a.shape[1] == 3:
        return np.clip(np.rint((a + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    raise ValueError(f"generator returned {a.dtype} {a.shape}; expected uint8 [N, H, W, 3] "
                     "or float [N, 3, H, W] in [-1, 1]")
