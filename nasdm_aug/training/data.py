"""Training data for the two NASDM models (Shrivastava & Fletcher 2023, 3.1-3.2): PatchStore
patches as (x, cond) tensors, a deterministic per-step index stream and batch flips."""

from __future__ import annotations

from typing import Iterator, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from nasdm_aug.data.masks import encode_mask, gap_weight_map, mask_channels, patch_condition, type_presence
from nasdm_aug.data.store import PatchStore
from nasdm_aug.types import MODEL_KINDS
from nasdm_aug.utils import InputError, unknown_name

__all__ = [
    "ModelKind",
    "KINDS",
    "NASDMDataset",
    "StepIndexSampler",
    "batch_indices",
    "step_seed",
    "random_flip",
    "x_channels",
    "image_to_x",
    "x_to_image",
]

ModelKind = Literal["mask", "patch"]
KINDS: tuple[str, ...] = MODEL_KINDS


def x_channels(kind: str, n_types: int) -> int:
    """Channels C of the generated tensor x: 3 for the patch model, the mask representation's for the mask model."""
    _check_kind(kind)
    return 3 if kind == "patch" else mask_channels(n_types)


def image_to_x(image: np.ndarray) -> np.ndarray:
    """A uint8 RGB patch [H, W, 3] as the patch model's x: float32 [3, H, W], 0 -> -1 and 255 -> 1."""
    return np.ascontiguousarray(image.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0)


def x_to_image(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`image_to_x` for a batch: x [N, 3, H, W] -> uint8 [N, H, W, 3] (rounded,
    clipped), so every uint8 value comes back as itself."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise unknown_name("model kind", kind, KINDS)


class NASDMDataset(Dataset):
    """A split of a PatchStore as model tensors.

    ``kind="patch"``: ``x`` is the H&E image in [-1, 1], [3, H, W]; ``cond`` the patch condition
    [1 + n_types + 1, H, W] (background + one-hot types, instance edge).
    ``kind="mask"``: ``x`` is :func:`encode_mask` of the patch, [n_types + 3, H, W] in [-1, 1];
    ``cond`` the type-presence vector [n_types]; with ``gap_weight`` > 0 also ``weight`` [1, H, W],
    :func:`~nasdm_aug.data.masks.gap_weight_map` of the patch (the per-pixel loss weight).

    Args:
        store: an open PatchStore, or a path to one.
        kind: ``"mask"`` or ``"patch"``.
        split: split name (``"Train"``, ``"R1"`` ...), or None for every patch.
        indices: explicit store indices instead of a split.
        gap_weight, gap_sigma: ``gap_weight_map``'s ``w0`` and ``sigma`` (mask only; 0: no ``weight``).
        drop_unannotated: leave out the patches holding this many or more dark blobs away from
            every annotated nucleus (:func:`~nasdm_aug.data.stain.off_mask_blobs`, darker than
            the median nucleus pixel of the split); 0 keeps every patch. ``dropped`` and
            ``blob_threshold`` say what it did.

    Raises:
        InputError: the split is missing or empty, or every patch of it is dropped.
        ValueError: ``gap_weight`` > 0 for a patch dataset.
    """

    def __init__(
        self,
        store: PatchStore | str,
        kind: str,
        split: str | None = "Train",
        indices: np.ndarray | list[int] | None = None,
        gap_weight: float = 0.0,
        gap_sigma: float = 3.0,
        drop_unannotated: int = 0,
    ) -> None:
        _check_kind(kind)
        if gap_weight > 0 and kind != "mask":
            raise ValueError(f"gap_weight weighs the mask model's loss; a {kind!r} dataset takes 0, got {gap_weight}")
        self.gap_weight, self.gap_sigma = float(gap_weight), float(gap_sigma)
        self.store = store if isinstance(store, PatchStore) else PatchStore(store)
        self.kind = kind
        self.n_types = self.store.type_table.n_types
        self.indices = np.asarray(self.store.indices(split) if indices is None else indices, dtype=np.int64)
        if len(self.indices) == 0:
            raise InputError(f"{self.store.path}: split {split!r} holds no patches to train on")
        self.dropped, self.blob_threshold = 0, None
        if drop_unannotated > 0:
            self._drop_unannotated(int(drop_unannotated), split)

    def _drop_unannotated(self, limit: int, split: str | None) -> None:
        from nasdm_aug.data.stain import nucleus_haematoxylin, store_off_mask_blobs

        try:
            self.blob_threshold = nucleus_haematoxylin(self.store, self.indices)
        except ValueError as exc:
            raise InputError(f"drop_unannotated {limit}: {exc}") from None
        keep = store_off_mask_blobs(self.store, self.indices, self.blob_threshold) < limit
        self.dropped = int((~keep).sum())
        if not keep.any():
            raise InputError(f"{self.store.path}: every patch of split {split!r} holds {limit} or more dark blobs "
                             f"off its annotated nuclei: drop_unannotated {limit} leaves nothing to train on")
        self.indices = self.indices[keep]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        """Item ``i`` of the split: ``x`` [C, H, W] float32 and ``cond`` (shapes in the class docstring)."""
        item = self.store.read([int(self.indices[i])])
        inst, type_map = item["inst"][0], item["type"][0]
        if self.kind == "patch":
            x = image_to_x(item["image"][0])
            cond = patch_condition(inst, type_map, self.n_types)
        else:
            x = encode_mask(inst, type_map, self.n_types)
            cond = type_presence(type_map, self.n_types)
        out = {"x": torch.from_numpy(np.ascontiguousarray(x)), "cond": torch.from_numpy(cond)}
        if self.gap_weight > 0:
            out["weight"] = torch.from_numpy(gap_weight_map(inst, self.gap_weight, self.gap_sigma)[None])
        return out


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (SplitMix64 finaliser), so nearby (seed, step) pairs decorrelate."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def batch_indices(step: int, n_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """Dataset positions of one rank's batch at one step, a pure function of its arguments.

    Every epoch is a fresh permutation seeded by (seed, epoch); the global batch of step s is the
    run of ``world_size * batch_size`` positions starting at ``s * world_size * batch_size`` of the
    endless concatenation of epochs, and rank r takes its r-th slice. Like a DistributedSampler
    with ``set_epoch``, but addressable by step, so a resumed run reads exactly what an
    uninterrupted one would have.

    Returns:
        int64 [batch_size].
    """
    start = (step * world_size + rank) * batch_size
    pos = np.arange(start, start + batch_size, dtype=np.int64)
    epochs, within = np.divmod(pos, n_items)
    out = np.empty(batch_size, dtype=np.int64)
    for e in np.unique(epochs):
        perm = np.random.default_rng(_mix(seed, int(e))).permutation(n_items)
        sel = epochs == e
        out[sel] = perm[within[sel]]
    return out


class StepIndexSampler(Sampler[list[int]]):
    """Batch sampler for a DataLoader: the batches of :func:`batch_indices` from ``start_step`` on.

    Args:
        n_items: dataset length.
        batch_size: per-rank batch size.
        seed: run seed.
        start_step: first step to yield (the resume point).
        end_step: one past the last step.
        rank, world_size: this process's place in the job.
    """

    def __init__(
        self, n_items: int, batch_size: int, seed: int, start_step: int, end_step: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.args = (n_items, batch_size, seed, rank, world_size)
        self.start_step, self.end_step = start_step, end_step

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def __iter__(self) -> Iterator[list[int]]:
        n, b, seed, rank, world = self.args
        for step in range(self.start_step, self.end_step):
            yield batch_indices(step, n, b, seed, rank, world).tolist()


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of one rank's randomness at one step (noise, timesteps, flips, condition dropout)."""
    return _mix(seed, step, rank, 0x5EED)


def random_flip(batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random horizontal and vertical flips per sample, the same for ``x``, a spatial ``cond`` and a
    per-pixel loss ``weight``.

    Histology has no canonical orientation, and every channel of both representations (types,
    instance edge, distance) is flip-equivariant. A 1-D ``cond`` (type presence) is unchanged.

    Args:
        batch: ``x`` [N, C, H, W], ``cond`` ([N, K, H, W] or [N, K]) and optionally ``weight`` [N, 1, H, W].
        generator: a CPU generator (draws 2N bits).

    Returns:
        A new dict with flipped tensors.
    """
    x, cond = batch["x"], batch["cond"]
    bits = torch.rand(2, x.shape[0], generator=generator) < 0.5
    out = dict(batch)
    for dim, flip in ((3, bits[0]), (2, bits[1])):
        m = flip.to(x.device).view(-1, 1, 1, 1)
        out["x"] = torch.where(m, out["x"].flip(dim), out["x"])
        for key in ("cond", "weight"):
            if key in out and out[key].ndim == 4:
                out[key] = torch.where(m, out[key].flip(dim), out[key])
    return out
