"""Per-row summaries of a study's runs: mean and sample std of each metric and of each type's F1
and PQ, and the verdict of each row against its baseline."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from nasdm_aug.studies.registry import StudyRow

__all__ = ["METRICS", "VERDICT_METRICS", "summarise", "compare_rows"]

METRICS = ("dice", "miou", "dice_with_bg", "miou_with_bg", "pq", "aji")


def summarise(results: Sequence[dict[str, Any]], rows: Sequence[StudyRow]) -> list[dict[str, Any]]:
    """Mean and sample std (ddof=1; 0 for one run) of each metric per row, in table order."""
    table = []
    for row in rows:
        runs = [r for r in results if r["study"] == row.study and r["row"] == row.label]
        if not runs:
            continue
        entry: dict[str, Any] = {"study": row.study, "row": row.label, "x": row.x, "group": row.group,
                                 "runs": len(runs),
                                 "n_patches": runs[0]["n_patches"], "n_real": runs[0]["n_real"],
                                 "n_synthetic": runs[0]["n_synthetic"]}
        for m in METRICS:
            entry[m], entry[f"{m}_std"] = _mean_std([r["metrics"].get(m) for r in runs])
        if all(r.get("per_type") for r in runs):
            entry["per_type"] = _per_type_summary(runs)
        if "train_nuclei" in runs[0]:
            entry["train_nuclei"] = runs[0]["train_nuclei"]
        table.append(entry)
    by_label = {(e["study"], e["row"]): e for e in table}
    for row in rows:
        entry, base = by_label.get((row.study, row.label)), by_label.get((row.study, row.baseline))
        if entry is not None and base is not None:
            entry["vs_baseline"] = compare_rows(entry, base)
    return table


VERDICT_METRICS = ("dice", "pq")


def compare_rows(entry: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """A row against its baseline: per metric the difference of means and a verdict, ``"gain"`` or
    ``"loss"`` only where the difference exceeds the sum of the two sample stds (their mean ± std
    bars do not overlap), else ``"within spread"``; per type the same for F1 where both have it."""
    out: dict[str, Any] = {"baseline": base["row"]}

    def verdict(a: float | None, sa: float, b: float | None, sb: float) -> dict[str, Any] | None:
        if a is None or b is None:
            return None
        diff = a - b
        word = "gain" if diff > sa + sb else "loss" if diff < -(sa + sb) else "within spread"
        return {"diff": diff, "spread": sa + sb, "verdict": word}

    for m in VERDICT_METRICS:
        out[m] = verdict(entry.get(m), entry.get(f"{m}_std", 0.0), base.get(m), base.get(f"{m}_std", 0.0))
    if entry.get("per_type") and base.get("per_type"):
        out["per_type_f1"] = {name: verdict(e.get("f1"), e.get("f1_std", 0.0), base["per_type"][name].get("f1"),
                                            base["per_type"][name].get("f1_std", 0.0))
                              for name, e in entry["per_type"].items() if name in base["per_type"]}
    return out


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float]:
    """Mean over the finite values (None when there are none) and their sample std (0 for fewer than 2)."""
    vals = np.array([np.nan if v is None else v for v in values], float)
    mean = float(np.nanmean(vals)) if np.isfinite(vals).any() else None
    return mean, float(np.nanstd(vals, ddof=1)) if np.isfinite(vals).sum() > 1 else 0.0


def _per_type_summary(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per type: mean and sample std of F1 and PQ over runs, and the Test nuclei count."""
    out = {}
    for name in runs[0]["per_type"]:
        entry: dict[str, Any] = {"n_gt": runs[0]["per_type"][name].get("n_gt")}
        for m in ("f1", "pq"):
            entry[m], entry[f"{m}_std"] = _mean_std([r["per_type"][name].get(m) for r in runs])
        out[name] = entry
    return out
