"""RandNucleiPasted: copy-paste augmentation with real nuclei, the no-training baseline to NASDM.

What a user would do instead of a generator (InsMix, Lin et al., MICCAI 2022): paste real nuclei
from other patches into a training patch, updating image, instance map and type map together.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type

from nasdm_aug.data.magnification import check_same_scale
from nasdm_aug.data.store import PatchStore, parse_store_arg
from nasdm_aug.mixing.balance import TARGETS, resolve_target
from nasdm_aug.mixing.paste import NucleusPool, PasteOptions, Placement, blend_placements, place_nucleus
from nasdm_aug.utils import InputError, unknown_name

__all__ = ["RandNucleiPasted", "WEIGHTINGS"]

WEIGHTINGS = (*TARGETS, "frequency")


class RandNucleiPasted(RandomizableTransform, MapTransform):
    """With probability ``prob``, paste real nuclei of other patches into a sample.

    InsMix copies real nuclei, transforms them under morphology constraints that keep their
    shape and size plausible, pastes them into background so that they do not overlap the
    nuclei there, perturbs the background, and smooths the seams with a trained Smooth-GAN. This
    transform keeps the training-free part: whole nuclei only (none cut by its patch border),
    areas within ``[min_area, max_area]``, a random flip / quarter turn, a scale drawn in
    ``scale`` (clipped to the area bounds), placement only where the nucleus grown by ``margin``
    pixels touches no nucleus (``max_tries`` positions, then it is skipped) unless
    ``allow_overlap``. Instead of the Smooth-GAN the image gets a feathered alpha (twice the
    Gaussian-blurred mask, capped at 1): the nucleus's own pixels are pasted whole and its rim of
    source background fades into the patch; the rim never changes a pixel of another nucleus.
    There is no background perturbation.

    Per sample: the number of nuclei is drawn in ``n_nuclei``; each nucleus draws its type by
    ``type_weights``, then a nucleus of that type uniformly from the pool. ``inst`` gets new ids
    (the sample's largest id + 1, + 2, ...), ``type`` their types, and every image key the same
    pixels. A nucleus is never pasted into the patch it came from: a sample whose ``origin`` is
    ``"real"`` (or missing) is taken to be patch ``index`` of the source store, and a
    ``"synthetic"`` one to carry the mask of its ``parent``, unless ``like`` names another file.

    The pool (every usable nucleus of the source patches with its crop) is built on the first
    call, or by :meth:`prepare`; build it before creating DataLoader workers to share one copy.
    The transform pickles with or without it. All draws come from ``self.R``, so
    ``set_random_state`` (directly or through MONAI's ``Compose``) reproduces the items exactly.

    Args:
        source: the PatchStore to take nuclei from, or its path as ``"real.h5"`` or ``"real.h5:R2"``.
        prob: probability of pasting into a sample.
        split: the source split when ``source`` names none (None: every patch).
        indices: take nuclei only from these store indices (which must lie in the split).
        n_nuclei: nuclei to paste per sample, an int or an inclusive range ``(low, high)``.
        type_weights: how a nucleus's type is drawn: ``"uniform"`` (every type in the pool alike,
            so rare types are as likely as common ones), ``"sqrt"`` (square roots of the pool's
            counts), ``"frequency"`` (as they occur in the pool), or ``{type name: weight}``.
        min_area, max_area, scale, flip_rotate, whole_only, allow_overlap, margin, max_tries,
            feather: shape and placement constraints (see :class:`~nasdm_aug.mixing.paste.PasteOptions`).
        like: a PatchStore (or path) of the data being augmented: refused unless it has the
            source's magnification, patch size and type table (see :meth:`check_like`).
        keys: image keys (all get the same pasted pixels); float images are taken as [0, 1],
            integer ones as 0..255; numpy or torch, channel-first [C, H, W] with 3 channels.
        inst_key: key of the instance map [H, W] or [1, H, W].
        type_key: key of the type map [H, W] or [1, H, W].
        origin_key: key of the sample's origin (``"real"`` / ``"synthetic"``).
        index_key: key of the sample's store index.
        parent_key: key of a synthetic sample's real parent index.
        pasted_key: key that receives the number of nuclei pasted (0 when none), or None.
        progress: show a bar while the pool is built.
        allow_missing_keys: do not raise when an image key is absent.

    Raises:
        InputError: an unreadable source, a split it lacks, indices outside the split, a type
            weighting it cannot read, a bad ``n_nuclei`` or constraint, or an unfit ``like``;
            on the first call, a pool with no usable nucleus.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        source: PatchStore | str | os.PathLike,
        prob: float = 0.5,
        *,
        split: str | None = "Train",
        indices: Sequence[int] | np.ndarray | None = None,
        n_nuclei: int | tuple[int, int] = (1, 4),
        type_weights: str | Mapping[str, float] = "uniform",
        min_area: int = 10,
        max_area: int | None = None,
        scale: tuple[float, float] = (0.9, 1.1),
        flip_rotate: bool = True,
        whole_only: bool = True,
        allow_overlap: bool = False,
        margin: int = 1,
        max_tries: int = 20,
        feather: float = 1.0,
        like: PatchStore | str | os.PathLike | None = None,
        keys: KeysCollection = "image",
        inst_key: str = "inst",
        type_key: str = "type",
        origin_key: str = "origin",
        index_key: str = "index",
        parent_key: str = "parent",
        pasted_key: str | None = "pasted",
        progress: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if isinstance(source, PatchStore):
            self.store = source
        else:
            path, split = parse_store_arg(source, split)
            self.store = PatchStore(path)
        self.split = split
        self.indices = self._source_indices(indices)
        self.options = PasteOptions(min_area=min_area, max_area=max_area, scale=tuple(scale), flip_rotate=flip_rotate,
                                    whole_only=whole_only, allow_overlap=allow_overlap, margin=margin,
                                    max_tries=max_tries, feather=feather)
        lo, hi = (n_nuclei, n_nuclei) if isinstance(n_nuclei, (int, np.integer)) else tuple(n_nuclei)
        if not 0 <= int(lo) <= int(hi):
            raise InputError(f"n_nuclei must be an int >= 0 or a range (low, high) with 0 <= low <= high, "
                             f"got {n_nuclei}")
        self.n_nuclei = (int(lo), int(hi))
        self.type_weights = type_weights
        self._type_weight_fn(np.ones(self.store.type_table.n_types))  # an unknown name fails here, not in a worker
        self.inst_key, self.type_key, self.origin_key = inst_key, type_key, origin_key
        self.index_key, self.parent_key, self.pasted_key = index_key, parent_key, pasted_key
        self.progress = progress
        self.same_store = True
        if like is not None:
            other = self.check_like(like)
            self.same_store = Path(other.path).resolve() == Path(self.store.path).resolve()
        self._pool: NucleusPool | None = None
        self._weights: np.ndarray | None = None

    # -- set-up ----------------------------------------------------------------------------------------
    def _source_indices(self, indices: Sequence[int] | np.ndarray | None) -> np.ndarray:
        in_split = self.store.indices(self.split)
        if indices is None:
            return in_split.astype(np.int64)
        idx = np.unique(np.asarray(indices, np.int64))
        outside = np.setdiff1d(idx, in_split)
        if len(outside):
            where = (f"split {self.split!r} of {self.store.path}" if self.split
                     else f"{self.store.path} ({len(self.store)} patches)")
            raise InputError(f"indices {outside[:5].tolist()} are not in {where}")
        return idx

    def check_like(self, store: PatchStore | str | os.PathLike) -> PatchStore:
        """Refuse (InputError, one line) data of another magnification, patch size or type table
        than the source; return ``store`` open."""
        other = store if isinstance(store, PatchStore) else PatchStore(store)
        check_same_scale(f"nuclei source {self.store.path}", self.store.scale_info(), f"the data {other.path}",
                         other.scale_info())
        if other.type_table.names != self.store.type_table.names:
            raise InputError(f"nuclei source {self.store.path} has types {list(self.store.type_table.names)} but the "
                             f"data {other.path} has {list(other.type_table.names)}")
        return other

    def _type_weight_fn(self, counts: np.ndarray) -> np.ndarray:
        w = self.type_weights
        if isinstance(w, str) and w not in WEIGHTINGS:
            raise unknown_name("type_weights", w, WEIGHTINGS, extra=", or {type name: weight}")
        if isinstance(w, str) and w == "frequency":
            return np.asarray(counts, np.float64)
        if not isinstance(w, (str, Mapping)):
            raise InputError(f"type_weights must be one of {', '.join(WEIGHTINGS)} or {{type name: weight}}, got {w!r}")
        return resolve_target(w, self.store.type_table, counts, str(self.store.path))

    def prepare(self) -> "RandNucleiPasted":
        """Build the nucleus pool now (else on the first call) and return self.

        Raises:
            InputError: no usable nucleus in the source patches, or none of a weighted type.
        """
        if self._pool is None:
            pool = NucleusPool(self.store, self.indices, self.options, progress=self.progress)
            counts = pool.counts()
            if len(pool) == 0:
                o = self.options
                raise InputError(f"{self.store.path}: no usable nucleus (typed, {o.min_area} to "
                                 f"{o.max_area or 'any'} px"
                                 f"{', not cut by the patch border' if o.whole_only else ''}) in the "
                                 f"{len(self.indices)} source patches")
            weights = self._type_weight_fn(counts) * (counts > 0)
            if weights.sum() <= 0:
                raise InputError(f"{self.store.path}: the source patches hold no nucleus of the types type_weights "
                                 f"{self.type_weights!r} asks for (pool per type: {counts.tolist()})")
            self._pool, self._weights = pool, weights
        return self

    @property
    def pool(self) -> NucleusPool:
        """The nucleus pool (built on first use)."""
        return self.prepare()._pool

    # -- the transform ---------------------------------------------------------------------------------
    def randomize(self, data: Any = None) -> None:
        """Draw whether to paste (the nuclei are drawn while pasting, from the same ``self.R``)."""
        super().randomize(None)

    def _excluded(self, d: Mapping[Hashable, Any]) -> int | None:
        """The source patch whose nuclei this sample must not get (None: any may come)."""
        if not self.same_store:
            return None
        origin = d.get(self.origin_key, "real")
        value = d.get(self.index_key) if origin == "real" else d.get(self.parent_key) if origin == "synthetic" else None
        return int(value) if value is not None and int(value) >= 0 else None

    def paste(self, inst: np.ndarray, type_map: np.ndarray, exclude: int | None = None) -> list[Placement]:
        """Paste nuclei into ``inst`` / ``type_map`` [H, W] (changed in place) with ``self.R``.

        Returns:
            The placements made (their images and alphas for :func:`blend_placements`).
        """
        pool = self.pool
        n = int(self.R.randint(self.n_nuclei[0], self.n_nuclei[1] + 1))
        p = self._weights * (pool.available(exclude) > 0)
        if n == 0 or p.sum() <= 0:
            return []
        p = p / p.sum()
        next_id = int(inst.max(initial=0)) + 1
        placements = []
        for _ in range(n):
            t = int(self.R.choice(len(p), p=p)) + 1
            j = pool.draw(t, self.R, exclude)
            placed = place_nucleus(inst, type_map, pool, j, self.R, self.options, next_id)
            if placed is not None:
                placements.append(placed)
                next_id += 1
        return placements

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        placements: list[Placement] = []
        if self._do_transform:
            inst, type_map = _label_plane(d[self.inst_key], np.int32), _label_plane(d[self.type_key], np.uint8)
            placements = self.paste(inst, type_map, self._excluded(d))
            if placements:
                for key in self.key_iterator(d):
                    d[key] = _blend(d[key], placements, inst)
                d[self.inst_key] = _like(inst, d[self.inst_key])
                d[self.type_key] = _like(type_map, d[self.type_key])
        if self.pasted_key is not None:
            d[self.pasted_key] = len(placements)
        return d


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _label_plane(x: Any, dtype: type) -> np.ndarray:
    """A writable copy of a label map [H, W] or [1, H, W] as [H, W]."""
    a = _to_numpy(x)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"expected a label map [H, W] or [1, H, W], got shape {a.shape}")
    return a.astype(dtype, copy=True)


def _like(plane: np.ndarray, dst: Any) -> Any:
    """``plane`` [H, W] in the shape, type and dtype of ``dst``."""
    return convert_to_dst_type(plane.reshape(tuple(dst.shape)), dst=dst)[0]


def _blend(img: Any, placements: list[Placement], inst: np.ndarray) -> Any:
    a = _to_numpy(img)
    if a.ndim != 3 or a.shape[0] != 3 or a.shape[1:] != inst.shape:
        raise ValueError(f"expected a channel-first image of shape {(3, *inst.shape)}, got {tuple(a.shape)}")
    floating = np.issubdtype(a.dtype, np.floating)
    out = blend_placements(a.astype(np.float32, copy=True), placements, inst, 1.0 / 255.0 if floating else 1.0)
    if not floating:
        out = np.clip(np.rint(out), np.iinfo(a.dtype).min, np.iinfo(a.dtype).max)
    return convert_to_dst_type(out, dst=img)[0]
