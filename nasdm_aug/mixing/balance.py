"""Rare-type balancing: per-patch nuclei-type counts, target type distributions and a seeded greedy
choice of synthetic patches (or of type combinations to synthesize) that moves a training set's
type frequencies toward a target, using NASDM's type-conditioned mask model (Shrivastava & Fletcher 2023, Sec. 3.1).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from nasdm_aug.data.store import PatchStore
from nasdm_aug.types import NucleiTypeTable
from nasdm_aug.utils import InputError, unknown_name

__all__ = ["TARGETS", "type_counts", "resolve_target", "parse_target", "greedy_balance", "l1_to_target",
           "needed_types", "BalanceSynthesisPlan", "plan_balance_synthesis", "parse_combination",
           "split_combination", "check_target_name", "named_values"]

TARGETS = ("uniform", "sqrt")
Target = str | Sequence[float] | Mapping[str, float]


def type_counts(store: PatchStore, indices: Sequence[int] | np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Nuclei per type in each patch, from the ``inst`` and ``type`` maps.

    An instance's type is read at its first pixel (all its pixels share one type: docs/architecture.md, Contracts);
    instances whose type is 0 are not counted.

    Args:
        store: the PatchStore.
        indices: [n] patch indices.
        batch_size: patches read at a time.

    Returns:
        int64 [n, n_types]: column k - 1 counts the nuclei of type id k.
    """
    idx = np.asarray(indices, np.int64)
    k = store.type_table.n_types
    out = np.zeros((len(idx), k), np.int64)
    for start in range(0, len(idx), batch_size):
        d = store.read(idx[start:start + batch_size], keys=("inst", "type"))
        out[start:start + batch_size] = _count_batch(d["inst"], d["type"], k)
    return out


def _count_batch(inst: np.ndarray, type_map: np.ndarray, k: int) -> np.ndarray:
    # one key per (patch, instance): np.unique's first occurrence gives each instance's type
    b = inst.shape[0]
    flat = inst.reshape(b, -1).astype(np.int64)
    keys = flat + np.arange(b, dtype=np.int64)[:, None] * (int(flat.max(initial=0)) + 1)
    sel = flat.ravel() > 0
    uniq, first = np.unique(keys.ravel()[sel], return_index=True)
    types = type_map.reshape(-1)[np.flatnonzero(sel)[first]].astype(np.int64)
    patch = np.flatnonzero(sel)[first] // flat.shape[1]
    ok = (types >= 1) & (types <= k)
    counts = np.bincount(patch[ok] * k + types[ok] - 1, minlength=b * k)
    return counts.reshape(b, k)


def parse_target(text: str) -> Target:
    """A target from the command line: ``uniform``, ``sqrt`` or ``name=weight,name=weight``.

    Raises:
        InputError: a malformed ``name=weight`` list.
    """
    if text.strip().lower() in TARGETS:
        return text.strip().lower()
    weights = {}
    for part in (p for p in text.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        try:
            weights[name.strip()] = float(value) if sep else math.nan
        except ValueError:
            weights[name.strip()] = math.nan
        if not math.isfinite(weights[name.strip()]):
            raise InputError(f"target {text!r}: expected 'uniform', 'sqrt' or name=weight,..., got {part!r}")
    if not weights:
        raise InputError(f"target {text!r}: expected 'uniform', 'sqrt' or name=weight,...")
    return weights


def check_target_name(target: str) -> None:
    """Raise InputError unless ``target`` is one of the named targets (``TARGETS``)."""
    if target not in TARGETS:
        raise unknown_name("balance target", target, TARGETS,
                           extra=", a dict of per-type weights or a tuple of n_types weights")


def resolve_target(target: Target, table: NucleiTypeTable, real_totals: np.ndarray, where: str = "") -> np.ndarray:
    """The target type distribution, normalised to sum 1.

    Args:
        target: ``"uniform"``; ``"sqrt"`` (square roots of the real counts, normalised); a dict
            ``{type name: weight}`` (unnamed types weigh 0); or a sequence of ``n_types`` weights.
        table: the type table the names refer to.
        real_totals: [n_types] nuclei per type in the real split (for ``"sqrt"``).
        where: the store the table belongs to, for error messages.

    Returns:
        float64 [n_types], non-negative, summing to 1.

    Raises:
        InputError: an unknown target, a type name the table lacks, negative weights, all zero,
            or a sequence of the wrong length.
    """
    k = table.n_types
    if isinstance(target, str):
        check_target_name(target)
        w = np.ones(k) if target == "uniform" else np.sqrt(np.asarray(real_totals, np.float64))
    elif isinstance(target, Mapping):
        w = np.zeros(k)
        for name, weight in target.items():
            try:
                w[table.id_of(str(name)) - 1] = float(weight)
            except InputError:
                raise InputError(f"balance target names type {name!r}, which the type table {table.name!r}"
                                 f"{' of ' + where if where else ''} lacks; valid: {', '.join(table.names)}") from None
    else:
        w = np.asarray(target, np.float64)
        if w.shape != (k,):
            raise InputError(f"balance target weights must be {k} numbers (one per type of table {table.name!r}: "
                             f"{', '.join(table.names)}), got {len(w.ravel())}")
    if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise InputError(f"balance target weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    return w / w.sum()


def l1_to_target(totals: np.ndarray, target: np.ndarray) -> float:
    """L1 distance between the type shares of ``totals`` [n_types] and ``target`` (0 to 2)."""
    s = float(np.sum(totals))
    return float(np.abs(totals / s - target).sum()) if s > 0 else float(np.abs(target).sum())


def needed_types(totals: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Types whose share of ``totals`` is below the target (the ones balancing must add): bool [n_types]."""
    s = float(np.sum(totals))
    share = totals / s if s > 0 else np.zeros_like(target)
    return target > share + 1e-12


def greedy_balance(base: np.ndarray, options: np.ndarray, target: np.ndarray, max_picks: int, *,
                   replace: bool = False) -> np.ndarray:
    """Greedily pick options whose type counts bring ``base`` closest (L1 of shares) to ``target``.

    Each step adds the option that lowers the L1 distance most, and stops when none lowers it or
    after ``max_picks``. Ties go to the lowest option index, so callers that permute ``options``
    with a seeded generator get seeded tie-breaking.

    Args:
        base: [K] counts already in the set.
        options: [M, K] counts each option would add (non-negative).
        target: [K] target shares (sum 1).
        max_picks: the most options to take.
        replace: an option may be taken more than once (type combinations) or at most once (patches).

    Returns:
        int64 [P] indices into ``options`` in the order taken (P <= max_picks).
    """
    totals = np.asarray(base, np.float64).copy()
    opts = np.asarray(options, np.float64)
    sizes = opts.sum(1)
    live = sizes > 0  # an empty option never changes the shares
    picks: list[int] = []
    current = l1_to_target(totals, target)
    while len(picks) < max_picks and live.any():
        # 1. the distance after adding each option, vectorised over the options
        after = np.abs((totals + opts) / (totals.sum() + sizes)[:, None] - target).sum(1)
        after[~live] = np.inf
        j = int(np.argmin(after))
        # 2. stop when nothing helps (a small margin keeps float noise from picking forever)
        if not after[j] < current - 1e-12:
            break
        picks.append(j)
        totals += opts[j]
        current = float(after[j])
        if not replace:
            live[j] = False
    return np.asarray(picks, np.int64)


def named_values(values: np.ndarray, table: NucleiTypeTable, digits: int | None = None) -> dict[str, float | int]:
    """Per-type values keyed by type name: ints, or floats rounded to ``digits`` places."""
    if digits is None:
        return {n: int(v) for n, v in zip(table.names, values)}
    return {n: round(float(v), digits) for n, v in zip(table.names, values)}


# -- planning what to synthesize -------------------------------------------------------------------
@dataclass(frozen=True)
class BalanceSynthesisPlan:
    """How many generated patches of which type combinations move a split toward a target.

    Attributes:
        combinations: ``("neutrophil+eosinophil:12", "neutrophil:3", ...)`` in output order
            (``SynthesizeConfig.combinations``).
        record: the JSON-able plan stored as the bank's ``attrs["balance_plan"]``: keys ``store``,
            ``split``, ``target`` (shares), ``ratio``, ``n_split``, ``max_patches``, ``n_patches``,
            ``min_support``, ``expected_nuclei`` (per chosen combination and type), ``counts`` (per combination),
            ``nuclei_before`` and ``nuclei_expected_after`` (per type), ``l1_before``, ``l1_expected_after``.
    """

    combinations: tuple[str, ...]
    record: dict

    @property
    def n_patches(self) -> int:
        """Patches the plan makes."""
        return int(self.record["n_patches"])

    def summary(self) -> str:
        """Printable lines: the combinations and the expected per-type counts."""
        r = self.record
        lines = [f"balance plan for {r['store']} split {r['split']!r} ({r['n_split']} patches): "
                 f"{r['n_patches']} of at most {r['max_patches']} generated patches (ratio {r['ratio']:g})"]
        expected = r.get("expected_nuclei", {})
        for c in self.combinations:
            each = expected.get(c.rpartition(":")[0], {})
            kept = ", ".join(f"{n} {v:.1f}" for n, v in each.items() if v)
            lines.append(f"  {c}" + (f" (expected a patch: {kept})" if kept else ""))
        for key in ("nuclei_before", "nuclei_expected_after"):
            lines.append(f"  {key}: " + ", ".join(f"{n} {v}" for n, v in r[key].items()))
        lines.append(f"  L1 to target: {r['l1_before']:.3f} -> {r['l1_expected_after']:.3f} (expected)")
        return "\n".join(lines)


def split_combination(text: str) -> tuple[list[str], int]:
    """``"name+name:count"`` -> (type names, count), without a type table.

    Raises:
        InputError: no count, a count that is not a whole number >= 1, or no type.
    """
    names, _, count = text.rpartition(":")
    if not (names.strip() and count.isdigit() and int(count) >= 1):
        raise InputError(f"combination {text!r}: expected 'name+name:count' with count >= 1")
    return names.split("+"), int(count)


def parse_combination(text: str, table: NucleiTypeTable) -> tuple[np.ndarray, int]:
    """``"name+name:count"`` -> (presence float32 [n_types], count).

    Raises:
        InputError: no count, a count < 1, no type, or a type the table lacks.
    """
    names, n = split_combination(text)
    row = np.zeros(table.n_types, np.float32)
    for name in names:
        try:
            row[table.id_of(name) - 1] = 1.0
        except InputError as exc:
            raise InputError(f"combination {text!r}: {exc}") from None
    return row, n


def plan_balance_synthesis(store: PatchStore, split: str | None, target: Target, ratio: float,
                           max_types: int = 3, min_support: int = 5) -> BalanceSynthesisPlan:
    """Work out the generated patches (type combinations and counts) that balance a real split.

    The mask model is conditioned on a patch's exact type-presence vector and learnt what real
    patches with that vector hold, so a request for a rare type alone gets what real patches of
    that type alone hold: on CoNSeP, 2 nuclei where patches that hold the type among others have
    15. The options are therefore the presence vectors the split itself shows.

    1. Count nuclei per type in the split; resolve the target; the types below their target share
       are the ones to add.
    2. Options: every presence vector seen in at least ``min_support`` patches of the split that
       holds a needed type, expected to add the mean per-type counts of those patches (types that
       are not needed included).
    3. Needed types that no such vector holds (absent from the split, or too rare) fall back to
       combinations of those types alone (at most ``max_types``), each type expected at its mean
       count over the split's patches that hold it, or over all type-holding patches if none does.
    4. Greedily add patches of the option that most lowers the L1 distance of the expected shares
       to the target, up to ``floor(ratio x len(split))`` patches.

    Args:
        store: the real PatchStore.
        split: its split (None = whole store).
        target: see :func:`resolve_target`.
        ratio: synthetic patches at most this fraction of the split, in (0, 1].
        max_types: largest fallback combination size.
        min_support: fewest patches of the split with a presence vector for it to be an option.

    Raises:
        InputError: an empty split, a ratio outside (0, 1], a bad target, or a split already at
            the target (nothing to make).
    """
    if not (math.isfinite(ratio) and 0 < ratio <= 1):
        raise InputError(f"ratio {ratio:g} is outside (0, 1] (synthetic patches as a fraction of the split)")
    idx = store.indices(split)
    if len(idx) == 0:
        raise InputError(f"{store.path}: split {split!r} holds no patches")
    table = store.type_table
    per_patch = type_counts(store, idx)
    totals = per_patch.sum(0)
    shares = resolve_target(target, table, totals, str(store.path))
    need = needed_types(totals, shares)
    combos, options = _balance_options(per_patch, need, max_types, max(1, int(min_support)))
    max_patches = int(math.floor(ratio * len(idx) + 1e-9))
    picks = greedy_balance(totals, options, shares, max_patches, replace=True)
    if len(picks) == 0:
        raise InputError(f"{store.path}: split {split!r} is already as close to the target as generated "
                         f"patches can bring it (ratio {ratio:g} allows {max_patches}); nothing to synthesize")
    chosen, counts = np.unique(picks, return_counts=True)
    names = ["+".join(table.names[t] for t in combos[c]) for c in chosen]
    after = totals + options[picks].sum(0)
    record = {"store": str(store.path), "split": split, "target": named_values(shares, table, 4), "ratio": float(ratio),
              "n_split": int(len(idx)), "max_patches": max_patches, "n_patches": int(len(picks)),
              "min_support": int(min_support),
              "expected_nuclei": {n: named_values(options[c], table, 3) for n, c in zip(names, chosen)},
              "counts": dict(zip(names, map(int, counts))),
              "nuclei_before": named_values(totals, table), "nuclei_expected_after": named_values(np.round(after), table),
              "l1_before": l1_to_target(totals, shares), "l1_expected_after": l1_to_target(after, shares)}
    return BalanceSynthesisPlan(tuple(f"{n}:{int(c)}" for n, c in zip(names, counts)), record)


def _balance_options(per_patch: np.ndarray, need: np.ndarray, max_types: int,
                     min_support: int) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """The type combinations a plan may request and the nuclei per type each is expected to add."""
    presence = per_patch > 0
    vectors, inverse, support = np.unique(presence, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    combos: list[tuple[int, ...]] = []
    rows: list[np.ndarray] = []
    for v, (vec, n) in enumerate(zip(vectors, support)):
        if n >= min_support and (vec & need).any():
            combos.append(tuple(np.flatnonzero(vec).tolist()))
            rows.append(per_patch[inverse == v].mean(0))
    covered = np.zeros_like(need)
    for c in combos:
        covered[list(c)] = True
    # types the split shows too rarely for an observed vector: estimated per type, as a last resort
    rest = np.flatnonzero(need & ~covered)
    mean_all = float(per_patch[presence].mean()) if presence.any() else 1.0
    mu = np.where(presence.any(0), per_patch.sum(0) / np.maximum(presence.sum(0), 1), mean_all)
    for r in range(1, min(max_types, len(rest)) + 1):
        for c in itertools.combinations(rest.tolist(), r):
            row = np.zeros(per_patch.shape[1])
            row[list(c)] = mu[list(c)]
            combos.append(c)
            rows.append(row)
    return combos, np.asarray(rows, np.float64).reshape(len(rows), per_patch.shape[1])
