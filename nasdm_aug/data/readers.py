"""Dataset readers: Lizard, CoNSeP/HoVer-Net, CoNIC and PanNuke on disk -> :class:`Tile` records,
registered by format name in ``READERS`` (what ``prepare --format`` takes).

Each format (Graham et al. 2021 Lizard/CoNIC, Graham et al. 2019 HoVer-Net, Gamper et al. 2020
PanNuke) is checked as it is read; any problem stops with one :class:`InputError` line. The
readers live in ``readers_folder`` (Lizard, CoNSeP) and ``readers_npy`` (CoNIC, PanNuke), their
shared checks in ``label_io``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence


from nasdm_aug.data.tile import Tile
from nasdm_aug.types import CONSEP, LIZARD, PANNUKE, NucleiTypeTable
from nasdm_aug.utils import InputError, unknown_name
from nasdm_aug.data.label_io import load_rgb
from nasdm_aug.data.readers_folder import CONSEP_CLASSES, CONSEP_MERGE, list_consep, list_lizard, read_consep, read_lizard
from nasdm_aug.data.readers_npy import list_conic, list_pannuke, read_cellvit_label, read_conic, read_pannuke

__all__ = [
    "ReaderSpec", "READERS", "get_reader", "read_lizard", "read_consep", "read_conic", "read_pannuke",
    "list_lizard", "list_consep", "list_conic", "list_pannuke", "load_rgb", "CONSEP_MERGE", "CONSEP_CLASSES",
    "read_cellvit_label",
]


# -- registry -------------------------------------------------------------------------------------------
def _conic_group(name: str) -> str:
    """CoNIC patches of one Lizard image share a split: ``crag_1-0003`` -> ``crag_1``."""
    return name.rsplit("-", 1)[0] if "-" in name else name


@dataclass(frozen=True)
class ReaderSpec:
    """One on-disk format.

    Attributes:
        name: format name (``--format``).
        read: ``read(src, names=None, type_table=None, **options) -> Iterator[Tile]``; only the
            keyword options named in ``options`` are accepted.
        list_names: ``list_names(src) -> list[str]``: the image names, validated cheaply.
        type_table: the format's own type table.
        group: maps an image name to the source image whose split it shares.
        options: the keyword options ``read`` accepts (``("classes",)`` for CoNSeP).
    """

    name: str
    read: Callable[..., Iterator[Tile]]
    list_names: Callable[[str | os.PathLike], list[str]]
    type_table: NucleiTypeTable
    group: Callable[[str], str] = str
    options: tuple[str, ...] = ()

    def read_with(self, src: str | os.PathLike, names: Sequence[str] | None = None,
                  type_table: NucleiTypeTable | None = None, **options) -> Iterator[Tile]:
        """``read`` with reader options; options given as None are left out (the reader's default).

        Raises:
            InputError: an option this format does not declare (the message lists the declared ones).
        """
        given = {k: v for k, v in options.items() if v is not None}
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            valid = ", ".join(self.options) or "none"
            raise InputError(f"format {self.name!r} takes no option {unknown[0]!r} (its options: {valid})")
        return self.read(src, names, type_table, **given)


READERS: dict[str, ReaderSpec] = {
    "lizard": ReaderSpec("lizard", read_lizard, list_lizard, LIZARD),
    "consep": ReaderSpec("consep", read_consep, list_consep, CONSEP, options=("classes",)),
    "conic": ReaderSpec("conic", read_conic, list_conic, LIZARD, _conic_group),
    "pannuke": ReaderSpec("pannuke", read_pannuke, list_pannuke, PANNUKE),
}


def get_reader(name: str) -> ReaderSpec:
    """Return a registered reader.

    Raises:
        InputError: unknown format; the message lists the valid ones.
    """
    if name not in READERS:
        raise unknown_name("format", name, sorted(READERS))
    return READERS[name]
