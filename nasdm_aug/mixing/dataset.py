"""SyntheticMixDataset: a monai.data.Dataset mixing real patches with a synthetic NASDM bank.

Implements the training sets of the NASDM paper's addition, replacement and synthetic-only
studies (Sec. 4.3.3-4.3.5) as a one-line drop-in for MONAI / PyTorch training loops.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import numpy as np
from monai.data import CacheDataset, Dataset
from monai.transforms import Compose, Transform, apply_transform

from nasdm_aug.data.store import PatchStore
from nasdm_aug.mixing.plan import MixConfig, MixPlan, build_plan
from nasdm_aug.mixing.targets import hover_targets

__all__ = ["SyntheticMixDataset", "LoadMixPatchd", "HoVerTargetsd", "open_store"]


def open_store(store: PatchStore | str | os.PathLike | None) -> PatchStore | None:
    """Return ``store`` as an open ``PatchStore`` (a path is opened; None stays None)."""
    if store is None or isinstance(store, PatchStore):
        return store
    return PatchStore(store)


class LoadMixPatchd(Transform):
    """Read the patch an ``{"origin", "index"}`` record names and convert it to MONAI layout.

    Deterministic, so ``CacheDataset`` caches its output. Each output item holds:
    ``image`` float32 [3, H, W] in [0, 1]; ``inst`` int32 [1, H, W]; ``type`` uint8 [1, H, W];
    ``origin`` ``"real"`` | ``"synthetic"``; ``index`` (int, index in that store); ``parent``
    (int, the store's parent metadata: the real patch whose mask made a synthetic patch, -1 for
    real patches and generated masks).

    Labels are channel-first [1, H, W] like the image, so MONAI's dictionary spatial transforms
    (``RandFlipd``, ``RandRotate90d``, ...) apply the same operation to every key.

    Args:
        real: the real store.
        synthetic: the synthetic bank, or None.
    """

    def __init__(self, real: PatchStore, synthetic: PatchStore | None = None) -> None:
        self.stores = {"real": real, "synthetic": synthetic}

    def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
        origin, index = record["origin"], int(record["index"])
        store = self.stores[origin]
        if store is None:
            raise ValueError(f"record {record} names a synthetic patch but no synthetic bank was given")
        patch = store[index]
        image = patch["image"].transpose(2, 0, 1).astype(np.float32)  # one pass, then in place
        image *= np.float32(1.0 / 255.0)
        return {
            "image": image,
            "inst": patch["inst"][None],
            # uint8 as stored: an int64 copy is 8x the bytes every worker ships to the trainer
            # (about 25% of DataLoader throughput at 128 px); MONAI losses cast labels themselves
            "type": patch["type"][None],
            "origin": origin,
            "index": index,
            "parent": int(patch["parent"]),
        }


class HoVerTargetsd(Transform):
    """Add HoVerNet targets from ``inst`` and ``type``: ``np``, ``hv``, ``nc``.

    ``np`` int64 [1, H, W] nuclei vs background; ``hv`` float32 [2, H, W] horizontal and vertical
    distance maps from MONAI's ``ComputeHoVerMaps``; ``nc`` int64 [1, H, W] the type map inside
    nuclei (:func:`nasdm_aug.mixing.targets.hover_targets`, channel-first for MONAI pipelines).
    Run it after spatial transforms: a flip negates one hv component, so hv maps must be
    computed on the final geometry, not transformed.
    """

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        t = hover_targets(d["inst"], d["type"])
        d.update(np=t["np"][None], hv=t["hv"], nc=t["nc"][None])
        return d


class SyntheticMixDataset(Dataset):
    """Real patches mixed with synthetic ones at the paper's ratios, as a ``monai.data.Dataset``.

    Modes (``ratio`` defaults in brackets; counts round half up, ``floor(x + 0.5)``):
        - ``"add"`` (paper 4.3.3) [0.5]: a base of ``base_fraction`` of the real split, plus
          ``ratio x len(split)`` synthetic patches whose parents are real patches of the split
          outside the base, so no base mask appears twice. Paper: base 0.25, ratio 0.25/0.5/0.75.
        - ``"replace"`` (paper 4.3.4) [0.5]: the whole split, ``ratio x len(split)`` of its real
          patches replaced in place by their synthetic counterparts (bank parent == index); the
          masks and the size stay the same.
        - ``"synthetic"`` (paper 4.3.5) [1.0]: synthetic only, ``ratio`` of the bank patches whose
          parents are in the split (all with a parent when ``split`` is None).
        - ``"real"`` [1.0]: real only, ``ratio`` of the split.
        - ``"balance"`` [0.5]: the whole split plus at most ``floor(ratio x len(split))`` bank
          patches (generated masks, or masks of the split), chosen greedily so the nuclei-type
          shares of the mixed set come closest (L1) to ``target``; ties follow the seeded
          permutation. ``plan().stats`` holds the per-type nuclei counts before and after.

    Items are MONAI dictionaries (see ``LoadMixPatchd``): ``image`` float32 [3, H, W] in [0, 1],
    ``inst`` int32 [1, H, W], ``type`` uint8 [1, H, W], ``origin``, ``index``, ``parent``, and
    with ``hovernet_targets`` also ``np`` [1, H, W], ``hv`` float32 [2, H, W], ``nc`` [1, H, W]
    (computed after ``transform``, so hv maps follow flips and rotations).

    Stores may be paths or open ``PatchStore`` objects; they reopen in each DataLoader worker,
    so ``num_workers >= 2`` is safe. For caching, ``as_cache_dataset()`` caches the reads (the
    deterministic prefix) and reruns the random transforms each epoch.

    Args:
        real: the real PatchStore or its path.
        synthetic: the synthetic bank or its path (needed by every mode but ``"real"``).
        split: real split to draw from (``"Train"``, ``"R1"``, ``"R2"``; None = whole store).
        mode: ``"add"``, ``"replace"``, ``"synthetic"``, ``"real"`` or ``"balance"``.
        ratio: the mode's fraction (see above); None for the mode's default.
        base_fraction: ``add``: fraction of the split kept as the real base.
        include_generated: ``add`` / ``synthetic``: also use bank patches from generated masks.
        seed: seed of the plan.
        target: ``balance``: ``"uniform"``, ``"sqrt"``, ``{type name: weight}`` or n_types weights.
        min_fidelity: draw only bank patches whose fidelity score (``nasdm-aug score``) is at least this.
        top_fraction: draw only the best this fraction of the bank's scored patches (not with
            ``min_fidelity``; see :func:`nasdm_aug.mixing.fidelity_filter.select_by_fidelity`). With either filter,
            ``replace`` replaces only real patches whose counterpart passes it.
        transform: a MONAI dictionary transform (or a sequence of them) applied to each item.
        hovernet_targets: add ``np``, ``hv``, ``nc`` after ``transform``.

    Raises:
        InputError: an unfit bank (origin, patch size, type table, parents), a ratio outside its
            mode's range, too few eligible synthetic patches, or a ``replace`` plan with a chosen
            real patch that has no synthetic counterpart; for ``balance``, a target naming a type
            the table lacks, or a bank with no patch of a type the target needs more of; a
            fidelity filter out of range, or given for a bank without (complete) scores.

    Example:
        >>> ds = SyntheticMixDataset("real.h5", "bank.h5", mode="add", ratio=0.5, transform=train_tf)
        >>> print(ds.summary())
        >>> loader = monai.data.DataLoader(ds, batch_size=8, shuffle=True, num_workers=2)
    """

    def __init__(
        self,
        real: PatchStore | str | os.PathLike,
        synthetic: PatchStore | str | os.PathLike | None = None,
        *,
        split: str | None = "Train",
        mode: str = "add",
        ratio: float | None = None,
        base_fraction: float = 0.25,
        include_generated: bool = False,
        seed: int = 0,
        target: str | tuple[float, ...] | dict[str, float] = "sqrt",
        min_fidelity: float | None = None,
        top_fraction: float | None = None,
        transform: Callable | Sequence[Callable] | None = None,
        hovernet_targets: bool = False,
    ) -> None:
        self.real = open_store(real)
        self.synthetic = open_store(synthetic)
        self.config = MixConfig(mode=mode, split=split, ratio=ratio, base_fraction=base_fraction,
                                include_generated=include_generated, seed=seed, target=target,
                                min_fidelity=min_fidelity, top_fraction=top_fraction)
        self._plan = build_plan(self.real, self.synthetic, self.config)
        records = [{"origin": o, "index": i} for o, i in self._plan.entries()]
        self._load = LoadMixPatchd(self.real, self.synthetic)
        after: list[Callable] = []
        if transform is not None:
            after += list(transform) if isinstance(transform, (list, tuple)) else [transform]
        if hovernet_targets:
            after.append(HoVerTargetsd())
        self._after = Compose(after).flatten() if after else None
        # the full chain (flattened, so CacheDataset sees where the first random transform is);
        # it holds the same transform objects as ``_after``, so seeding either seeds both
        super().__init__(data=records, transform=Compose([self._load, *after]).flatten())

    @classmethod
    def from_config(cls, real: PatchStore | str | os.PathLike, synthetic: PatchStore | str | os.PathLike | None,
                    config: MixConfig, **kwargs: Any) -> "SyntheticMixDataset":
        """The dataset a ``MixConfig`` describes (what a study row or ``export`` plans from);
        ``kwargs`` are the other arguments (``transform``, ``hovernet_targets``)."""
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        return cls(real, synthetic, **fields, **kwargs)

    def _transform(self, index: int) -> dict[str, Any]:
        # read directly rather than through Compose: its per-call overhead is ~20% of a 128-px read
        item = self._load(self.data[index])
        return item if self._after is None else apply_transform(self._after, item)

    def plan(self) -> MixPlan:
        """The exact items: ``plan().entries()`` is ``[(origin, index), ...]`` in dataset order."""
        return self._plan

    def summary(self) -> str:
        """Printable lines: mode, split, ratio, seed, counts per origin and the indices, and with a
        fidelity filter how many of the bank's patches it kept."""
        return self._plan.summary()

    def as_cache_dataset(self, **kwargs: Any) -> CacheDataset:
        """A ``monai.data.CacheDataset`` over the same plan and transforms.

        The store reads are cached; the transforms from the first random one onward run per
        epoch. ``kwargs`` go to ``CacheDataset`` (``cache_rate``, ``num_workers``, ``progress``...).
        """
        kwargs.setdefault("progress", False)
        return CacheDataset(data=self.data, transform=self.transform, **kwargs)

    def __repr__(self) -> str:
        c = self._plan.counts()
        return (f"SyntheticMixDataset(mode={self.config.mode!r}, split={self.config.split!r}, "
                f"n={len(self)}, real={c['real']}, synthetic={c['synthetic']})")
