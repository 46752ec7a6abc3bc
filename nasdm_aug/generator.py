"""NASDMGenerator: trained mask + patch models -> annotated H&E patches (NASDM, Shrivastava & Fletcher 2023).

``generate_masks`` samples the mask model for a multi-hot choice of types and decodes instance +
type maps; ``generate_patches`` samples the SPADE patch model for given maps; ``generate`` chains
both (the paper's NASDM++). Every sample is seeded by (seed, its index), never by batch. The
shipped models and the finding and loading of runs are in :mod:`nasdm_aug.training.model_runs`,
whose names this module re-exports.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from nasdm_aug.data.magnification import check_same_scale
from nasdm_aug.data.masks import decode_mask, mask_channels, patch_condition_torch, type_presence
from nasdm_aug.hardware import (LAYOUT_CHOICES, PRECISIONS, memory_format, precision_name, resolve_dtype,
                                resolve_sampling_layout)
from nasdm_aug.sampling import (SamplerOptions, check_guidance_interval, classifier_free_guidance, guided_timesteps,
                                sample, sample_seed)
from nasdm_aug.training.checkpoint import load_data_info, resolve_checkpoint
from nasdm_aug.training.config import TrainConfig
from nasdm_aug.training.distributed import pick_device
from nasdm_aug.training.data import x_to_image
from nasdm_aug.training.model_runs import (NAMED_MODELS, TOY_MODEL_DIR, load_model_run, model_weights_hash,
                                           recommended_options,
                                           named_model_dir, resolve_model_dirs)
from nasdm_aug.types import NucleiTypeTable
from nasdm_aug.utils import InputError, file_digest

__all__ = ["NASDMGenerator", "TOY_MODEL_DIR", "NAMED_MODELS", "named_model_dir", "DEFAULT_GUIDANCE",
           "DEFAULT_MASK_GUIDANCE",
           "DEFAULT_MARKER_THRESHOLD", "resolve_types", "types_as_requested",
           "resolve_model_dirs", "model_weights_hash"]

#: decode_mask's marker threshold for generated masks. A generated edge channel is often too faint
#: to part touching nuclei; a peak of the distance channel per nucleus parts them. Measured on the
#: consep-cpu mask models (benchmarks/ablate_mask_model.py, 128 masks): 0.5 brought the area and
#: solidity distances to real masks to a half or less of edge markers alone (0), 0.7 split nuclei
#: in two, and type control did not move.
DEFAULT_MARKER_THRESHOLD = 0.5

#: Classifier-free guidance scale used when none is given (eps = eps_null + s (eps_cond - eps_null)).
DEFAULT_GUIDANCE = 1.5

#: The mask model's own guidance scale. Masks want more guidance than patches: on the consep-cpu
#: mask model (benchmarks/ablate_mask_model.py, 128 Train requests, DDPM 50) nuclei per patch rose
#: with the scale, 9.2 / 11.2 / 13.3 / 14.7 / 16.1 / 18.3 at 1 / 1.5 / 2 / 2.5 / 3 / 4 (real
#: patches: 14.7), and 2.5 brought the count distance to real masks from 3.7 to 2.6 with type
#: precision 0.99; the patch model's best scale (1.5) left masks too sparse. It wants the default
#: 50 steps: at 25 it drew a fifth fewer nuclei, and the rare type no more often than unguided.
DEFAULT_MASK_GUIDANCE = 2.5
#: The noise levels (low, high] of sigma = sqrt((1 - alpha_bar) / alpha_bar) where the mask model
#: is guided; None: every step. Guided at 4.5 only where sigma <= 8, the consep-cpu mask model drew
#: masks nearer real ones on every shape and type measure (four request seeds), but its bank of
#: generated masks trained the balance study's HoVerNet no better than real data alone, where the
#: bank sampled at every step gave a gain (benchmarks/RESULTS.md, "The mask model's guidance
#: limited to an interval of noise levels"): so every step stays the default.
DEFAULT_MASK_GUIDANCE_INTERVAL: tuple[float, float] | None = None
# The mask stage draws its noise from a seed stream disjoint from the patch stage's.
_MASK_SEED_SALT = 0x6D61736B
# Redraws of a mask (generate_masks' max_tries) hash their attempt into a stream of their own.
_REDRAW_INDEX = 1 << 40


def types_as_requested(type_map: np.ndarray, presence: np.ndarray) -> bool:
    """Whether a decoded mask holds exactly the requested types: each type of the presence vector
    ``presence`` [n_types] (entries > 0.5) and no other."""
    presence = np.asarray(presence)
    return bool(np.array_equal(type_presence(type_map, presence.shape[-1]) > 0, presence > 0.5))


def resolve_types(types: str | Sequence[str] | np.ndarray, n: int, table: NucleiTypeTable, seed: int = 0,
                  sample_offset: int = 0) -> np.ndarray:
    """The multi-hot type-presence vectors [n, n_types] for a request.

    Args:
        types: ``"all"``; ``"random"`` (each type present with probability 1/2, drawn per sample
            from (seed, index), never empty); type names (a list or a comma-separated string) given
            to every sample; or an explicit array [n, n_types] / [n_types].
        n: number of samples.
        table: the models' type table.
        seed: run seed (for ``"random"``).
        sample_offset: index of the first sample (for ``"random"``).

    Raises:
        InputError: an unknown type name, an empty choice, or an array of the wrong shape.
    """
    k = table.n_types
    if isinstance(types, np.ndarray):
        arr = np.broadcast_to(types.astype(np.float32), (n, k)) if types.shape in ((k,), (n, k)) else None
        if arr is None:
            raise InputError(f"type presence array must be [{k}] or [{n}, {k}], got {list(types.shape)}")
        return np.array(arr)  # a writable copy: torch.from_numpy warns on read-only broadcast views
    if isinstance(types, str) and types.strip().lower() == "all":
        return np.ones((n, k), np.float32)
    if isinstance(types, str) and types.strip().lower() == "random":
        out = np.zeros((n, k), np.float32)
        for j in range(n):
            rng = np.random.default_rng(sample_seed(seed, sample_offset + j))
            row = rng.random(k) < 0.5
            while not row.any():
                row = rng.random(k) < 0.5
            out[j] = row
        return out
    names = [t for t in (types.split(",") if isinstance(types, str) else types) if str(t).strip()]
    if not names:
        raise InputError("no nuclei types given; name at least one, or use 'all' or 'random'")
    row = np.zeros(k, np.float32)
    for name in names:
        row[table.id_of(str(name)) - 1] = 1.0
    return np.tile(row, (n, 1))


class NASDMGenerator:
    """Generate annotated H&E patches with trained NASDM models.

    Build it with :meth:`from_pretrained`. The keyword arguments of the ``generate*`` methods:
    ``sampling`` (a :class:`~nasdm_aug.sampling.SamplerOptions`: sampler, steps, spacing, its own
    options such as DDIM's eta; default ``SamplerOptions()``, ancestral DDPM at its 50 steps),
    ``guidance`` (1 = no guidance; ``DEFAULT_GUIDANCE`` for patches, ``DEFAULT_MASK_GUIDANCE`` for
    masks), ``seed=0``, ``sample_offset=0`` (index of
    the first sample), ``batch_size=8`` and ``progress=False``.

    Args:
        patch_model: the SPADE patch U-Net (``forward(x, t, cond)``, ``null_condition``).
        patch_config: its TrainConfig.
        type_table: the nuclei types both models were trained on.
        mask_model: the mask U-Net and its config (None: only ``generate_patches`` works).
        device: where the models run (None or "auto": this rank's GPU when there is one, else the CPU).
        dtype: ``torch.float32``, ``torch.bfloat16`` (autocast sampling), or a precision in
            ``hardware.PRECISIONS`` (the older ``"float32"`` and ``"bfloat16"`` are read too);
            ``"auto"`` (default) is bfloat16 where this device runs it natively (an Ampere or
            later GPU, a CPU with AVX512-BF16 or AMX), else float32. ``self.dtype`` is the
            resolved one. bf16 moved the patches by about one grey level on average, and FID, KID
            and the fidelity criteria by less than a change of seed does (benchmarks/RESULTS.md).
        layout: ``"auto"`` (default), ``"channels_last"`` or ``"contiguous"`` (NCHW); the models and
            every sampled tensor take it. ``"auto"`` is contiguous on a CUDA GPU, whose group norm
            works in NCHW, and channels_last elsewhere, the faster sampling layout on the CPU
            measured (:func:`~nasdm_aug.hardware.resolve_sampling_layout`). ``self.layout`` is the
            resolved one. The layouts give the same samples up to float rounding.
        compile: sample through ``torch.compile`` of each network (compiled on first use, once per
            batch shape; on a CPU it needs a C++ compiler). The samples equal the eager ones up to
            float rounding. Eager sampling computes the SPADE maps once per batch
            (``DiffusionUNet.reuse_condition``); compiled sampling recomputes them at every step,
            and was the slower of the two on the CPU measured (benchmarks/RESULTS.md).
        model_hash: an identifier of the weights, recorded in synthetic stores.
    """

    def __init__(
        self,
        patch_model: torch.nn.Module,
        patch_config: TrainConfig,
        type_table: NucleiTypeTable,
        mask_model: torch.nn.Module | None = None,
        mask_config: TrainConfig | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str = "auto",
        layout: str = "auto",
        compile: bool = False,
        model_hash: str = "",
    ) -> None:
        if isinstance(dtype, str):
            try:
                precision_name(dtype)
            except ValueError:
                raise InputError(f"dtype must be torch.float32, torch.bfloat16 or a precision ({', '.join(PRECISIONS)}), "
                                 f"got {dtype!r}") from None
        elif dtype not in (torch.float32, torch.bfloat16):
            raise InputError(f"dtype must be float32 or bfloat16, got {dtype}")
        if layout not in LAYOUT_CHOICES:
            raise InputError(f"layout must be one of {', '.join(LAYOUT_CHOICES)}, got {layout!r}")
        self.device = pick_device(device)
        self.layout = resolve_sampling_layout(layout, self.device)
        self._format = memory_format(self.layout)
        self.dtype = resolve_dtype(dtype, self.device) if isinstance(dtype, str) else dtype
        self.type_table = type_table
        self.patch_model = patch_model.to(self.device, memory_format=self._format).eval()
        self.patch_config = patch_config
        self.mask_model = None if mask_model is None else mask_model.to(self.device, memory_format=self._format).eval()
        self.mask_config = mask_config
        self.model_hash = model_hash
        self.compile = bool(compile)
        self._compiled: dict[str, Any] = {}
        #: objective power of the training data (from the run's data.json); None where not recorded
        self.magnification: float | None = None
        #: the sampling the runs' sampling.json files recommend, as keyword arguments of
        #: :meth:`generate` (``sampling``, ``guidance``, ``guidance_interval`` and their ``mask_``
        #: twins; set by :meth:`from_pretrained`): ``gen.generate("all", 8, **gen.recommended)``.
        #: {} where the runs recommend nothing (the toy models)
        self.recommended: dict[str, Any] = {}
        self._diffusion = {"patch": patch_config.diffusion.build()}
        if mask_config is not None:
            self._diffusion["mask"] = mask_config.diffusion.build()
            if mask_config.model.image_size != patch_config.model.image_size:
                raise InputError(
                    f"mask model makes {mask_config.model.image_size}-px masks but the patch model was "
                    f"trained on {patch_config.model.image_size}-px patches"
                )

    @classmethod
    def from_pretrained(
        cls,
        mask_run: str | os.PathLike | None,
        patch_run: str | os.PathLike | None = None,
        *,
        ema: bool = True,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str = "auto",
        layout: str = "auto",
        compile: bool = False,
    ) -> "NASDMGenerator":
        """Load the models from run (or checkpoint) directories, each rebuilt from its own config.

        Args:
            mask_run: the mask model's run directory, a shipped model's name (``"toy"``,
                ``"consep-cpu"``; then ``patch_run`` is ignored), or None for a patch-only generator.
            patch_run: the patch model's run directory.
            ema: load EMA weights (default) rather than the raw ones.
            device: None or "auto" (default): this rank's GPU when there is one, else the CPU.
            dtype: a torch dtype or a precision: fp32, bf16 (autocast) or ``"auto"`` (default; see the class).
            layout: ``"auto"`` (default: contiguous on a CUDA GPU, channels_last elsewhere),
                ``"channels_last"`` or ``"contiguous"`` (see the class).
            compile: sample through ``torch.compile`` (see the class).

        Raises:
            InputError: a missing or broken run directory, or models of different type tables/sizes.
        """
        if mask_run is not None and (named := named_model_dir(str(mask_run))) is not None:
            mask_run, patch_run = named / "mask", named / "patch"
        if patch_run is None:
            raise InputError("a patch model run directory is required")
        device = pick_device(device)
        patch_model, patch_config = load_model_run(patch_run, "patch", ema, device)
        patch_info = load_data_info(patch_run)
        table = NucleiTypeTable.from_json(patch_info["type_table"])
        files = [resolve_checkpoint(patch_run) / ("ema.safetensors" if ema else "model.safetensors")]
        mask_model = mask_config = None
        mask_info: dict = {}
        if mask_run is not None:
            mask_model, mask_config = load_model_run(mask_run, "mask", ema, device)
            mask_info = load_data_info(mask_run)
            mask_table = NucleiTypeTable.from_json(mask_info["type_table"])
            if mask_table != table:
                raise InputError(f"{mask_run}: mask model types {mask_table.names} differ from the patch model's {table.names}")
            check_same_scale(f"mask model {mask_run}", mask_info, f"patch model {patch_run}", patch_info)
            files.insert(0, resolve_checkpoint(mask_run) / ("ema.safetensors" if ema else "model.safetensors"))
        gen = cls(patch_model, patch_config, table, mask_model, mask_config, device=device, dtype=dtype,
                  layout=layout, compile=compile, model_hash=file_digest(*files))
        gen.magnification = patch_info.get("magnification") or mask_info.get("magnification")
        gen.recommended = recommended_options(mask_run, patch_run)
        return gen

    def scale_info(self) -> dict[str, Any]:
        """``patch_size`` and ``magnification`` of the training data (see ``check_same_scale``)."""
        return {"patch_size": self.patch_size, "magnification": self.magnification}

    @property
    def patch_size(self) -> int:
        """Side of the patches (and masks) the models were trained on."""
        return int(self.patch_config.model.image_size)

    # -- sampling -------------------------------------------------------------------------------
    def _sample(self, kind: str, cond: torch.Tensor, channels: int, *, sampling: SamplerOptions | None,
                guidance: float, seed: int, sample_offset: int,
                guidance_interval: tuple[float, float] | None = None,
                indices: Sequence[int] | None = None) -> torch.Tensor:
        steps = None if guidance_interval is None else guided_timesteps(
            self._diffusion[kind].alphas_cumprod, check_guidance_interval(guidance_interval))
        guided = classifier_free_guidance(self._network(kind), guidance, guided=steps)
        fmt = self._format

        def model_fn(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
            return guided(x.contiguous(memory_format=fmt), t, cond=cond)

        if cond.dim() == 4:
            cond = cond.contiguous(memory_format=fmt)
        shape = (cond.shape[0], channels, self.patch_size, self.patch_size)
        model = self.mask_model if kind == "mask" else self.patch_model
        # the condition is the same at every step: its SPADE maps are computed once per batch
        # (not under compile, whose traced graph would guard on the kept tensors)
        reuse = contextlib.nullcontext() if self.compile else model.reuse_condition()
        try:
            with reuse, torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16):
                x = sample(model_fn, shape, {"cond": cond}, diffusion=self._diffusion[kind], options=sampling,
                           seed=seed, sample_offset=sample_offset, indices=indices, device=self.device)
        except Exception as exc:
            if self.compile and type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise InputError(f"torch.compile of the {kind} model failed on {self.device} ({first}); "
                                 "sample without `compile`") from None
            raise
        return x.float().clamp(-1, 1)

    def _network(self, kind: str) -> Any:
        """The ``kind`` network as sampling calls it: itself, or its ``torch.compile`` wrapper
        (which forwards ``null_condition`` and the other attributes to the network)."""
        model = self.mask_model if kind == "mask" else self.patch_model
        if not self.compile:
            return model
        if kind not in self._compiled:
            self._compiled[kind] = torch.compile(model)
        return self._compiled[kind]

    def generate_masks(
        self, types: str | Sequence[str] | np.ndarray, n: int, *, sampling: SamplerOptions | None = None,
        guidance: float = DEFAULT_MASK_GUIDANCE, seed: int = 0, sample_offset: int = 0,
        batch_size: int = 8, min_size: int = 10, marker_threshold: float = DEFAULT_MARKER_THRESHOLD,
        progress: bool = False, guidance_interval: tuple[float, float] | None = DEFAULT_MASK_GUIDANCE_INTERVAL,
        max_tries: int = 1,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sample nuclei masks for a choice of types and decode them (touching nuclei separated).

        Args:
            types: see :func:`resolve_types` (``"all"``, ``"random"``, names, or presence vectors).
            n: number of masks (>= 1).
            guidance: the mask model's classifier-free guidance scale (default
                ``DEFAULT_MASK_GUIDANCE``, 2.5: more than the patches' 1.5, see there).
            min_size: instances smaller than this many pixels are dropped by the decoder.
            marker_threshold: :func:`decode_mask`'s: one marker per distance peak above it as well
                as per edge-bounded core (default 0.5; 0 is edge markers alone, the decoder before).
            guidance_interval: (low, high) noise levels sigma between which the mask model is
                guided (as :meth:`generate_patches`' ``guidance_interval``; default
                ``DEFAULT_MASK_GUIDANCE_INTERVAL``, None); None: every step.
            max_tries: draws per mask at most (>= 1). A decoded mask whose types are not exactly
                the requested ones (:func:`types_as_requested`) is drawn again with fresh noise, up
                to this many draws in all; the first draw that holds them is kept, else the first
                draw. Draw ``a`` of sample ``i`` depends only on (seed, i, a), so a mask that holds
                its types at the first draw is the one ``max_tries=1`` makes, whatever the batch.
            (others: see the class docstring.)

        Returns:
            (inst int32 [n, H, W], type uint8 [n, H, W]).

        Raises:
            InputError: no mask model, ``n`` < 1, ``max_tries`` < 1, or an unknown type.
        """
        if self.mask_model is None:
            raise InputError("this generator has no mask model; load one with from_pretrained(mask_run, patch_run)")
        _check_n(n)
        if int(max_tries) < 1:
            raise InputError(f"max_tries must be >= 1, got {max_tries}")
        k = self.type_table.n_types
        presence = resolve_types(types, n, self.type_table, seed, sample_offset)
        insts = np.zeros((n, self.patch_size, self.patch_size), np.int32)
        type_maps = np.zeros_like(insts, dtype=np.uint8)
        for start in tqdm(range(0, n, batch_size), desc="masks", disable=not progress, leave=False):
            pending = list(range(start, min(n, start + batch_size)))
            for attempt in range(int(max_tries)):
                rep = self.sample_mask_representations(presence[pending], sampling=sampling, guidance=guidance,
                                                       seed=seed, indices=[sample_offset + j for j in pending],
                                                       guidance_interval=guidance_interval, attempt=attempt)
                missed = []
                for j, r in zip(pending, rep.cpu().numpy()):
                    inst, type_map = decode_mask(r, k, min_size=min_size, marker_threshold=marker_threshold)
                    held = types_as_requested(type_map, presence[j])
                    if attempt == 0 or held:  # a miss keeps the first draw
                        insts[j], type_maps[j] = inst, type_map
                    if not held:
                        missed.append(j)
                pending = missed
                if not pending:
                    break
        return insts, type_maps

    def sample_mask_representations(
        self, presence: np.ndarray, *, sampling: SamplerOptions | None = None,
        guidance: float = DEFAULT_MASK_GUIDANCE, seed: int = 0, sample_offset: int = 0,
        guidance_interval: tuple[float, float] | None = DEFAULT_MASK_GUIDANCE_INTERVAL,
        indices: Sequence[int] | None = None, attempt: int = 0,
    ) -> torch.Tensor:
        """One batch of the mask model's raw output, before :func:`decode_mask`.

        Sample ``i`` of the batch is sample ``sample_offset + i`` (or ``indices[i]``) of the
        ``seed`` stream, the same one :meth:`generate_masks` draws, so the raw output of any mask it
        made can be looked at again.

        Args:
            presence: float [B, n_types] type-presence vectors (:func:`resolve_types`).
            guidance_interval: (low, high) noise levels where ``guidance`` applies (None: every step).
            indices: the samples' indices in the stream [B] (instead of ``sample_offset``).
            attempt: which draw of :meth:`generate_masks`' ``max_tries`` (0: the first); each draw
                has its own noise.

        Returns:
            float32 [B, mask_channels(n_types), H, W] in [-1, 1], on the generator's device.
        """
        if self.mask_model is None:
            raise InputError("this generator has no mask model; load one with from_pretrained(mask_run, patch_run)")
        k = self.type_table.n_types
        presence = np.asarray(presence, np.float32)
        if presence.ndim != 2 or presence.shape[1] != k:
            raise InputError(f"presence vectors must be [B, {k}], got shape {presence.shape}")
        cond = torch.from_numpy(presence).to(self.device)
        stream = seed ^ _MASK_SEED_SALT
        if attempt:  # a redraw: a stream of its own, so draw a of sample i depends on (seed, i, a) only
            stream = sample_seed(stream, _REDRAW_INDEX + int(attempt))
        return self._sample("mask", cond, mask_channels(k), sampling=sampling, guidance=guidance,
                            seed=stream, sample_offset=sample_offset, indices=indices,
                            guidance_interval=guidance_interval)

    def generate_patches(
        self, inst: np.ndarray, type_map: np.ndarray, *, sampling: SamplerOptions | None = None,
        guidance: float = DEFAULT_GUIDANCE, seed: int = 0, sample_offset: int = 0, batch_size: int = 8,
        progress: bool = False, guidance_interval: tuple[float, float] | None = None,
    ) -> np.ndarray:
        """Sample H&E patches for given instance + type maps.

        Args:
            inst: instance maps [n, H, W] (or one [H, W]).
            type_map: type maps of the same shape, ids 0..n_types.
            guidance_interval: (low, high) noise levels sigma = sqrt((1 - alpha_bar) / alpha_bar)
                between which the patch model is guided (low < sigma <= high); the other steps run
                the conditional model alone, at half the cost of a guided step (Kynkaenniemi et al.
                2024). None (default): every step.

        Returns:
            uint8 RGB patches [n, H, W, 3] (or [H, W, 3] for one map).

        Raises:
            InputError: maps of the wrong size for the model, or type ids outside its table.
        """
        single = np.ndim(inst) == 2
        if single:
            inst, type_map = inst[None], type_map[None]
        p = self.patch_size
        if inst.shape != type_map.shape or inst.shape[1:] != (p, p):
            raise InputError(
                f"masks of shape {list(inst.shape[1:])} do not fit the patch model, trained on {p}x{p} patches"
            )
        if type_map.size and int(type_map.max()) > self.type_table.n_types:
            raise InputError(f"type id {int(type_map.max())} is outside 0..{self.type_table.n_types} of the model's table")
        n = inst.shape[0]
        _check_n(n)
        out = np.zeros((n, p, p, 3), np.uint8)
        for start in tqdm(range(0, n, batch_size), desc="patches", disable=not progress, leave=False):
            stop = min(n, start + batch_size)
            cond = patch_condition_torch(
                torch.from_numpy(np.asarray(inst[start:stop], np.int64)).to(self.device),
                torch.from_numpy(np.asarray(type_map[start:stop], np.int64)).to(self.device),
                self.type_table.n_types,
            )
            x = self._sample("patch", cond, 3, sampling=sampling, guidance=guidance, seed=seed,
                             sample_offset=sample_offset + start, guidance_interval=guidance_interval)
            img = x_to_image(x)
            out[start:stop] = img.cpu().numpy()
        return out[0] if single else out

    def generate(self, types: str | Sequence[str] | np.ndarray, n: int, *,
                 mask_guidance: float = DEFAULT_MASK_GUIDANCE,
                 mask_guidance_interval: tuple[float, float] | None = DEFAULT_MASK_GUIDANCE_INTERVAL,
                 mask_sampling: SamplerOptions | None = None, **kwargs) -> dict[str, np.ndarray]:
        """End to end (NASDM++): masks for the chosen types, then patches for those masks.

        Args:
            types, n: as in :meth:`generate_masks`.
            mask_guidance: the mask stage's guidance scale (``guidance`` is the patch stage's).
            mask_guidance_interval: the mask stage's guidance interval (``guidance_interval`` is
                the patch stage's); None (the default): every step.
            mask_sampling: the mask stage's sampler options; None (the default): ``sampling``,
                the patch stage's, drives both.
            Other keyword arguments go to both stages (``min_size``, ``marker_threshold`` and
            ``max_tries`` only to the mask stage, ``guidance_interval`` only to the patch stage).

        Returns:
            dict with ``image`` uint8 [n, H, W, 3], ``inst`` int32 [n, H, W], ``type`` uint8 [n, H, W].
        """
        mask_only = {k: kwargs.pop(k) for k in ("min_size", "marker_threshold", "max_tries") if k in kwargs}
        patch_only = {k: kwargs.pop(k) for k in ("guidance_interval",) if k in kwargs}
        mask_kwargs = {**kwargs, "guidance": mask_guidance, "guidance_interval": mask_guidance_interval}
        if mask_sampling is not None:
            mask_kwargs["sampling"] = mask_sampling
        inst, type_map = self.generate_masks(types, n, **mask_only, **mask_kwargs)
        image = self.generate_patches(inst, type_map, **kwargs, **patch_only)
        return {"image": image, "inst": inst, "type": type_map}


def _check_n(n: int) -> None:
    if int(n) < 1:
        raise InputError(f"number of samples must be >= 1, got {n}")
