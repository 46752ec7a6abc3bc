"""The ``nasdm-aug evaluate`` report folder: metrics JSON, markdown tables shaped like NASDM's Table 1
(Shrivastava & Fletcher, 2023) and its expert-criteria table, and PNGs of the best and worst synthetic patches.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nasdm_aug.data.store import PatchStore
from nasdm_aug.metrics.html_report import write_html_report
from nasdm_aug.metrics.stain import BLOB_MARGIN_PX, BLOB_MIN_AREA_PX, STROMA_MARGIN_PX, plot_stain_profile
from nasdm_aug.utils import atomic_output, json_safe
from nasdm_aug.viz import contact_sheet, overlay_mask

__all__ = ["write_bank_report", "markdown_report", "json_safe"]

_CRITERIA = (("dice", "Boundary Dice of matched nuclei", "up"), ("boundary_f1", "Boundary F1 (2 px)", "up"),
             ("type_accuracy", "Type accuracy of matched nuclei", "up"), ("missing_rate", "Missing nuclei rate", "down"),
             ("excess_rate", "Excess nuclei rate", "down"),
             ("detection_rate", "Detected nuclei rate (centroid within hover_net's radius)", "up"),
             ("score", "Per-patch fidelity score", "up"))


def _undefined(v: Any) -> bool:
    return v is None or (isinstance(v, float) and not math.isfinite(v))


def _f(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _table1(result: dict[str, Any]) -> list[str]:
    g = result["generative"]
    real, syn = result["real"], result["synthetic"]
    kid = g["kid"]
    split = f":{real['split']}" if real["split"] else ""
    return [
        "| Set | N | FID ↓ | IS ↑ | KID ×10³ ↓ |", "|---|---:|---:|---:|---:|",
        f"| real ({Path(real['store']).name}{split}) | {real['n']} | 0 (reference) | "
        f"{_f(g['is_real']['mean'], 2)} ± {_f(g['is_real']['std'], 2)} | 0 (reference) |",
        f"| {'real' if syn.get('origin') == 'real' else 'synthetic'} ({Path(syn['store']).name}"
        f"{':' + syn['split'] if syn.get('split') else ''}) | {syn['n']} | {_f(g['fid'], 2)} | "
        f"{_f(g['is_synthetic']['mean'], 2)} ± {_f(g['is_synthetic']['std'], 2)} | "
        f"{_f(kid['mean'] * 1e3, 2)} ± {_f(kid['std'] * 1e3, 2)} |",
        "",
        ("IS: ImageNet classes of the Inception network." if g["is_kind"] == "imagenet" else
         f"IS ({g['is_kind']}): the InceptionV3 file ends at pool3 and has no ImageNet classifier, so IS is taken "
         "over k-means pseudo-classes of the real features (hard assignment: the effective number of real-data "
         "clusters covered). It is not comparable with ImageNet-IS numbers in papers; pass `--inception` with a "
         "TorchScript that returns class logits for the classic IS."),
    ]


def _fidelity_table(fid: dict[str, Any], type_names: list[str]) -> list[str]:
    cmp = fid["comparison"]
    rows = ["| Criterion | Synthetic | Real | Ratio (syn / real) |", "|---|---:|---:|---:|"]
    for key, label, arrow in _CRITERIA:
        per_type = key in ("type_accuracy", "missing_rate", "excess_rate", "detection_rate")
        names = [""] + ([f"/{n}" for n in type_names] if per_type else [])
        for suffix in names:
            c = cmp.get(key + suffix)
            if c is None or (suffix and _undefined(c["synthetic"]) and _undefined(c["real"])):
                continue  # a type neither side has: a row of n/a says nothing
            what = f"{label} {'↑' if arrow == 'up' else '↓'}" if not suffix else f"&nbsp;&nbsp;{suffix[1:]}"
            rows.append(f"| {what} | {_f(c['synthetic'])} | {_f(c['real'])} | {_f(c['ratio'], 2)} |")
    s, r = fid["synthetic"], fid["real"]
    rows += ["", f"Nuclei in the masks: synthetic {int(s['n_mask'])}, real {int(r['n_mask'])}; found by the "
             f"segmenter: {int(s['n_pred'])} and {int(r['n_pred'])}. Real patches are scored against their own "
             "annotations, so the ratio says how close a synthetic patch shows its mask to how a real patch "
             "shows its annotation (1 = as faithful as real)."]
    return rows


def _mask_table(mm: dict[str, Any]) -> list[str]:
    if not mm.get("n_generated"):
        return ["Every synthetic patch was made from a real mask; no mask-model checks apply."]
    rows = [f"{mm['n_generated']} patches from generated masks.", "",
            "| Statistic | Wasserstein distance to real |", "|---|---:|"]
    rows += [f"| {k} | {_f(v)} |" for k, v in mm["realism"].items() if "/" not in k]
    if "contact" in mm:
        # both sides as shares, since real masks touch too: what matters is the gap to them
        rows += ["", "| Nuclei kept apart | Generated | Real |", "|---|---:|---:|"]
        labels = {"touching": "touching another nucleus (share of nuclei)",
                  "clustered": "3+ nuclei in one foreground region (share of regions)"}
        rows += [f"| {labels[k]} | {_f(v['generated'])} | {_f(v['real'])} |" for k, v in mm["contact"].items()]
    if "type_control" in mm:
        rows += ["", "| Type | Precision | Recall | Requested | Present |", "|---|---:|---:|---:|---:|"]
        rows += [f"| {k} | {_f(v['precision'])} | {_f(v['recall'])} | {int(v['requested'])} | {int(v['present'])} |"
                 for k, v in mm["type_control"].items() if v["requested"] or v["present"]]
    return rows


def _stain_table(stain: dict[str, Any]) -> list[str]:
    syn, real, ratio = stain["synthetic"], stain["real"], stain["ratio"]
    labels = (("nuclei", "Mask nuclei"), ("stroma", f"Tissue more than {STROMA_MARGIN_PX} px from every nucleus"),
              ("contrast", "Contrast (nuclei / that tissue)"))
    rows = ["| Haematoxylin (optical density) | Synthetic | Real | Ratio (syn / real) |", "|---|---:|---:|---:|"]
    rows += [f"| {label} | {_f(syn[k], 4 if k != 'contrast' else 2)} | {_f(real[k], 4 if k != 'contrast' else 2)} | "
             f"{_f(ratio[k], 2)} |" for k, label in labels]
    rows += ["", "A tissue ratio above 1 means the bank draws the tissue between its nuclei with more haematoxylin "
             "than real tissue has (lilac or purple stroma): a segmenter trained on it learns that haematoxylin-rich "
             "texture can be background and misses pale real nuclei. On real CoNSeP, over seven patch models, the lower "
             "this ratio the higher on the whole the Dice of a HoVerNet trained on their banks alone (Spearman -0.74), "
             "where FID ranked them the wrong way round (benchmarks/RESULTS.md, \"What a bank's stain says about its "
             "training value\").", "", "`stain_profile.png`: haematoxylin against the distance to the nucleus boundary."]
    blobs = stain.get("off_mask_blobs")
    if blobs:
        rows += ["", "| Dark blobs off the mask nuclei, per patch | Synthetic | Real | Ratio (syn / real) |",
                 "|---|---:|---:|---:|",
                 f"| >= {BLOB_MIN_AREA_PX} px, more than {BLOB_MARGIN_PX} px from every nucleus, haematoxylin above "
                 f"{_f(blobs['threshold'], 4)} (the real median nucleus pixel) | {_f(blobs['synthetic'], 2)} | "
                 f"{_f(blobs['real'], 2)} | {_f(blobs['ratio'], 2)} |",
                 "", "In a synthetic patch these are mostly nuclei drawn where the mask has none: a segmenter trained "
                 "on the bank learns that such nuclei are background. In real patches they are mostly nuclei nobody "
                 "annotated, necrotic debris and tissue dye."]
    return rows


def markdown_report(result: dict[str, Any], type_names: list[str]) -> str:
    """The report as markdown: Table-1-like generative metrics, fidelity, mask-model and stain tables."""
    lines = ["# Synthetic bank evaluation", "", "## Image quality (as NASDM Table 1)", "", *_table1(result), ""]
    lines += ["## Mask fidelity (the four expert criteria, automated)", ""]
    if result["fidelity"] is None:
        lines += ["Not measured: pass `--segmenter` with a HoVerNet run trained on real data.", ""]
    else:
        lines += [*_fidelity_table(result["fidelity"], type_names), "",
                  "Best and worst synthetic patches by fidelity score: `best_patches.png`, `worst_patches.png` "
                  "(columns: patch, its mask, what the segmenter found).", ""]
    lines += ["## Mask model", "", *_mask_table(result["mask_model"]), ""]
    if result.get("stain"):
        lines += ["## Nuclear stain against the tissue around it", "", *_stain_table(result["stain"]), ""]
    return "\n".join(lines)


def _patch_sheet(syn: PatchStore, indices: list[int], scores: list[float], segment: Callable, path: Path) -> None:
    d = syn.read(indices)
    pred_inst, pred_type = segment(d["image"])
    rows = [[img, overlay_mask(img, inst, typ, syn.type_table), overlay_mask(img, pi, pt, syn.type_table)]
            for img, inst, typ, pi, pt in zip(d["image"], d["inst"], d["type"], pred_inst, pred_type)]
    contact_sheet(rows, path, column_titles=["synthetic", "mask", "segmented"],
                  row_titles=[f"#{i} s={s:.2f}" for i, s in zip(indices, scores)])


def write_bank_report(result: dict[str, Any], config: Any, syn: PatchStore, out: str | Path, *, overwrite: bool = False,
                 segment: Callable | None = None) -> Path:
    """Write ``metrics.json``, ``report.md``, ``config.json``, the best/worst PNGs, ``stain_profile.png`` and ``report.html``
    (all of it in one offline page) to ``out`` atomically."""
    with atomic_output(out, overwrite=overwrite) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "metrics.json").write_text(json.dumps(json_safe(result), indent=2) + "\n")
        config.save(tmp / "config.json")
        fid = result["fidelity"]
        if fid is not None and segment is not None and config.n_show:
            order = np.argsort(fid["scores"], kind="stable")
            idx, scores = np.asarray(fid["indices"]), np.asarray(fid["scores"])
            n = min(config.n_show, len(order))
            best, worst = order[::-1][:n], order[:n]
            _patch_sheet(syn, [int(i) for i in idx[best]], list(scores[best]), segment, tmp / "best_patches.png")
            _patch_sheet(syn, [int(i) for i in idx[worst]], list(scores[worst]), segment, tmp / "worst_patches.png")
        pictures = [f"![{name.split('_')[0]} patches]({name})" for name in ("best_patches.png", "worst_patches.png")
                    if (tmp / name).is_file()]
        text = markdown_report(result, list(syn.type_table.names))
        if result.get("stain"):
            plot_stain_profile(result["stain"], tmp / "stain_profile.png")
            text = text.replace("`stain_profile.png`: haematoxylin", "![stain profile](stain_profile.png)\n\nHaematoxylin")
        (tmp / "report.md").write_text(text)
        if pictures:
            text += "\n\n## Best and worst synthetic patches by fidelity score\n\n" + "\n\n".join(pictures) + "\n"
        write_html_report(text, tmp, "nasdm-aug evaluate")
    return Path(out)
