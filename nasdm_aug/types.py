"""Nuclei type tables: ids, names and display colours for each supported dataset.

Lizard's six types, CoNSeP's merged four and PanNuke's five are tables of their own
(docs/architecture.md, Contracts). Every store records its table, and no code assumes a number of types.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from nasdm_aug.utils import unknown_name

__all__ = [
    "NucleiTypeTable",
    "LIZARD",
    "CONSEP",
    "PANNUKE",
    "TYPE_TABLES",
    "get_type_table",
    "MODEL_KINDS",
    "LAYOUTS",
    "LAYOUT_CHOICES",
    "PRECISIONS",
]

#: The two NASDM models: the mask model (nuclei layouts for a choice of types) and the patch model
#: (H&E for a given layout). Run directories, configs and the CLI name them by these words.
MODEL_KINDS: tuple[str, ...] = ("mask", "patch")

# how sampling lays tensors out; channels_last sampled 1.22-1.56x faster than NCHW with the same
# patches on the AVX512 box (benchmarks/RESULTS.md, Synthesis: every combination of layout, dtype and compile)
LAYOUTS = ("channels_last", "contiguous")
# how the trainers lay tensors out: "auto" times a few steps of each layout once per machine and
# model (nasdm_aug.hardware.fastest_layout), because the faster one differs by machine: channels_last
# trained the patch U-Net 1.27-1.44x faster than NCHW on the AVX512 box (benchmarks/RESULTS.md,
# Which layout `auto` picks) and
# 0.92x on an AVX2-only one (131.7 against 120.9 ms per sample, tiny preset, 64 px)
LAYOUT_CHOICES = ("auto",) + LAYOUTS
# the precision the networks train and sample in: fp32, bf16 autocast, or "auto": bf16 where it is
# native, else fp32 (nasdm_aug.hardware.resolve_precision). Training, HoVerNet and synthesis all
# take these words.
PRECISIONS = ("fp32", "bf16", "auto")


@dataclass(frozen=True)
class NucleiTypeTable:
    """A table of nuclei types; id 0 is always background and types are 1..n_types.

    Args:
        name: registry name of the table (``"lizard"``, ``"consep"``, ``"pannuke"``).
        names: type names in id order; ``names[k - 1]`` is the name of type id ``k``.
        colours: display colours (RGB uint8 triples) in id order, one per type.
    """

    name: str
    names: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...]

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError(f"type table {self.name!r} has no types")
        if len(self.names) != len(self.colours):
            raise ValueError(
                f"type table {self.name!r}: {len(self.names)} names but {len(self.colours)} colours"
            )
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"type table {self.name!r} has duplicate names: {self.names}")
        if len(self.names) > 254:
            raise ValueError(f"type table {self.name!r}: at most 254 types fit a uint8 type map")

    @property
    def n_types(self) -> int:
        """Number of nuclei types, background excluded."""
        return len(self.names)

    @property
    def ids(self) -> tuple[int, ...]:
        """Type ids 1..n_types."""
        return tuple(range(1, self.n_types + 1))

    def id_of(self, name: str) -> int:
        """Return the id of a type by name (case-insensitive).

        Raises:
            InputError: the name is not in the table; the message lists the valid names.
        """
        lowered = [n.lower() for n in self.names]
        key = name.strip().lower()
        if key not in lowered:
            raise unknown_name("type", name, self.names, extra=f" (the types of table {self.name!r})")
        return lowered.index(key) + 1

    def name_of(self, type_id: int) -> str:
        """Return the name of a type id (0 is ``"background"``)."""
        if type_id == 0:
            return "background"
        if not 1 <= type_id <= self.n_types:
            raise KeyError(f"type id {type_id} is outside 0..{self.n_types} of table {self.name!r}")
        return self.names[type_id - 1]

    def palette(self) -> "list[tuple[int, int, int]]":
        """Colours indexed by type id, with black for background at index 0."""
        return [(0, 0, 0), *self.colours]

    def to_json(self) -> str:
        """Serialise the table (stored as an HDF5 attribute)."""
        return json.dumps({"name": self.name, "names": list(self.names), "colours": [list(c) for c in self.colours]})

    @classmethod
    def from_json(cls, text: str) -> "NucleiTypeTable":
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        return cls(name=d["name"], names=tuple(d["names"]), colours=tuple(tuple(int(v) for v in c) for c in d["colours"]))


# Colours follow the Lizard / CoNIC overlay conventions so figures read like the papers'.
LIZARD = NucleiTypeTable(
    name="lizard",
    names=("neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil", "connective"),
    colours=((0, 128, 255), (0, 200, 0), (255, 0, 0), (255, 128, 0), (255, 0, 255), (255, 220, 0)),
)
CONSEP = NucleiTypeTable(
    name="consep",
    names=("other", "inflammatory", "epithelial", "spindle-shaped"),
    colours=((0, 200, 200), (255, 0, 0), (0, 200, 0), (255, 220, 0)),
)
PANNUKE = NucleiTypeTable(
    name="pannuke",
    names=("neoplastic", "inflammatory", "connective", "dead", "epithelial"),
    colours=((255, 0, 0), (0, 128, 255), (0, 200, 0), (160, 160, 160), (255, 220, 0)),
)

TYPE_TABLES: dict[str, NucleiTypeTable] = {t.name: t for t in (LIZARD, CONSEP, PANNUKE)}


def get_type_table(name: str) -> NucleiTypeTable:
    """Return a registered type table by name.

    Raises:
        InputError: unknown name; the message lists the registered tables.
    """
    if name not in TYPE_TABLES:
        raise unknown_name("type table", name, sorted(TYPE_TABLES))
    return TYPE_TABLES[name]
