"""The studies as records: each one names its rows, title, plot and the banks it needs.

The registry is light (no torch, no MONAI), so the CLI can list the studies and the report can
title and draw them without importing the training code. ``nasdm_aug.studies`` plans and runs
them. A new study is one :class:`Study` in ``STUDY_REGISTRY`` (its rows' mixing modes must exist
in ``nasdm_aug.mixing.plan.MIX_MODES``) plus its test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nasdm_aug.utils import InputError

__all__ = ["StudyRow", "Study", "STUDY_REGISTRY", "STUDIES", "PAPER_STUDIES", "PLOT_AXES", "BANK_SPLITS", "select_rows"]


@dataclass(frozen=True)
class StudyRow:
    """One row of a study table: how its training set is mixed.

    Attributes:
        study: the name of the study it belongs to.
        label: the row's name in the paper's table.
        mode, split, ratio, base_fraction: the ``SyntheticMixDataset`` arguments.
        bank: a key of ``BANK_SPLITS`` (``"S1"``, ``"S2"``, ``"B"``: generated rare-type patches) or
            None (real only).
        x: the row's position on the study's plot (percent of synthetic patches).
    """

    study: str
    label: str
    mode: str
    split: str
    ratio: float
    base_fraction: float = 0.25
    bank: str | None = None
    x: float = 0.0

    def mix_config(self, seed: int = 0, target: Any = "sqrt") -> Any:
        """The row's ``MixConfig`` (what ``SyntheticMixDataset`` plans from)."""
        from nasdm_aug.mixing.plan import MixConfig

        return MixConfig(mode=self.mode, split=self.split, ratio=self.ratio, base_fraction=self.base_fraction, seed=seed,
                         target=target)

    @property
    def slug(self) -> str:
        """A folder name for the row."""
        return "".join(c if c.isalnum() else "-" for c in self.label.lower()).strip("-").replace("--", "-")


@dataclass(frozen=True)
class Study:
    """One study.

    Attributes:
        name: ``--study`` value.
        title: the heading of its table.
        rows: its rows, in table order.
        axis: the x-axis label of its plot.
        plot: ``"curve"`` (Dice and PQ against the synthetic share) or ``"per_type"`` (bars per
            nucleus type, with a per-type table and the training nuclei per type recorded).
        paper: one of the paper's studies, run by ``--study all``.
    """

    name: str
    title: str
    rows: tuple[StudyRow, ...]
    axis: str
    plot: str = "curve"
    paper: bool = True

    def __post_init__(self) -> None:
        if self.plot not in ("curve", "per_type"):
            raise ValueError(f"study {self.name!r}: plot must be 'curve' or 'per_type', got {self.plot!r}")
        wrong = [r.label for r in self.rows if r.study != self.name]
        if wrong:
            raise ValueError(f"study {self.name!r}: rows {wrong} name another study")


def _rows(study: str, *rows: tuple) -> tuple[StudyRow, ...]:
    return tuple(StudyRow(study, *r[:5], **(r[5] if len(r) > 5 else {})) for r in rows)


STUDY_REGISTRY: dict[str, Study] = {s.name: s for s in (
    # Table 3: 25% of R2, plus S2 patches made from the masks of the other 75% of R2
    Study("addition", "Table 3: adding synthetic patches (S2) to 25% of R2", _rows(
        "addition",
        ("25% R2", "add", "R2", 0.0, 0.25, {"bank": "S2", "x": 0}),
        ("25% R2 + 25% S2", "add", "R2", 0.25, 0.25, {"bank": "S2", "x": 25}),
        ("25% R2 + 50% S2", "add", "R2", 0.50, 0.25, {"bank": "S2", "x": 50}),
        ("25% R2 + 75% S2", "add", "R2", 0.75, 0.25, {"bank": "S2", "x": 75})),
        "S2 added (% of R2)"),
    # Table 4: R2 with 0/25/50/75/100% of its patches swapped for their synthetic counterparts
    Study("replacement", "Table 4: replacing real patches of R2 by synthetic ones (same masks)", _rows(
        "replacement",
        ("R2", "real", "R2", 1.0, 0.25, {"x": 0}),
        ("75% R2 / 25% S2", "replace", "R2", 0.25, 0.25, {"bank": "S2", "x": 25}),
        ("50% R2 / 50% S2", "replace", "R2", 0.50, 0.25, {"bank": "S2", "x": 50}),
        ("25% R2 / 75% S2", "replace", "R2", 0.75, 0.25, {"bank": "S2", "x": 75}),
        ("S2", "replace", "R2", 1.0, 0.25, {"bank": "S2", "x": 100})),
        "synthetic share of R2 (%)"),
    # Table 5: real R1 against synthetic S1 (same masks)
    Study("real-vs-synthetic", "Table 5: real (R1) against synthetic (S1) annotations", _rows(
        "real-vs-synthetic",
        ("R1", "real", "R1", 1.0, 0.25, {"x": 0}),
        ("S1", "synthetic", "R1", 1.0, 0.25, {"bank": "S1", "x": 100})),
        "synthetic share (%)"),
    # rare-type balancing: R2 alone against R2 + at most 50% of |R2| generated rare-type patches chosen
    # to move the nuclei-type shares toward StudyConfig.balance_target (same epochs, so more steps).
    # Not in "all": it needs generated masks and a bank of its own, which would double the demo's time.
    Study("balance", "Rare-type balancing: R2 alone against R2 + balanced synthetic patches (same epochs)", _rows(
        "balance",
        ("R2", "real", "R2", 1.0, 0.25, {"x": 0}),
        ("R2 + balanced", "balance", "R2", 0.5, 0.25, {"bank": "B", "x": 100})),
        "nuclei type", plot="per_type", paper=False),
)}

# views kept for callers that index by name
STUDIES: dict[str, list[StudyRow]] = {name: list(s.rows) for name, s in STUDY_REGISTRY.items()}
PAPER_STUDIES = tuple(name for name, s in STUDY_REGISTRY.items() if s.paper)
PLOT_AXES = {name: s.axis for name, s in STUDY_REGISTRY.items()}
# the real split whose masks each bank is made from ("B": generated masks, balanced against R2)
BANK_SPLITS = {"S1": "R1", "S2": "R2", "B": "R2"}


def select_rows(study: str) -> list[StudyRow]:
    """Rows of one study, or of ``"all"``.

    Raises:
        InputError: an unknown study name.
    """
    if study == "all":
        return [r for name in PAPER_STUDIES for r in STUDY_REGISTRY[name].rows]
    if study not in STUDY_REGISTRY:
        raise InputError(f"unknown study {study!r}; valid: {', '.join(STUDY_REGISTRY)}, all")
    return list(STUDY_REGISTRY[study].rows)
