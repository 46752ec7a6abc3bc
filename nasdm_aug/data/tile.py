"""The Tile record every reader yields: one annotated image (docs/architecture.md, Contracts)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Tile"]


@dataclass
class Tile:
    """One annotated H&E image.

    Attributes:
        image: uint8 [H, W, 3] RGB.
        inst: int32 [H, W]; 0 background, instances 1..N.
        type: uint8 [H, W]; 0 background, else the instance's type id (one type per instance).
        name: the source image's name (file stem), used for per-image splits and provenance.
    """

    image: np.ndarray
    inst: np.ndarray
    type: np.ndarray
    name: str

    def __post_init__(self) -> None:
        h, w = self.inst.shape[:2]
        if self.image.shape != (h, w, 3) or self.type.shape != (h, w):
            raise ValueError(
                f"{self.name}: image {self.image.shape}, inst {self.inst.shape} and type {self.type.shape} disagree"
            )
