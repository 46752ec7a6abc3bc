"""HoVerNet training targets (Graham et al., 2019, Sec. 3.2): nuclei map np, horizontal/vertical
distance maps hv (MONAI's ComputeHoVerMaps) and type map nc, as an array function and a dict transform.
"""

from __future__ import annotations

from typing import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from nasdm_aug.mixing.targets import as_label_map, hover_targets

__all__ = ["as_label_map", "compute_targets", "HoVerNetTargetsd"]

def compute_targets(inst: np.ndarray | torch.Tensor, type_map: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
    """Targets of the three branches from an instance map and a type map, as torch tensors
    (:func:`nasdm_aug.mixing.targets.hover_targets`).

    Args:
        inst: instance map [H, W] or [1, H, W], 0 background.
        type_map: type map of the same shape, 0 background, 1..n_types.

    Returns:
        dict with ``np`` long [H, W] (1 inside nuclei), ``hv`` float [2, H, W] (horizontal then
        vertical) and ``nc`` long [H, W] (type ids, 0 background).
    """
    return {k: torch.from_numpy(v) for k, v in hover_targets(inst, type_map).items()}


class HoVerNetTargetsd(MapTransform):
    """Dictionary transform adding ``np``, ``hv``, ``nc`` targets from the ``inst`` and ``type`` keys.

    Run it after every spatial augmentation: hv depends on orientation, so it must be computed
    from the augmented instance map, never flipped or rotated itself.

    Args:
        keys: the instance-map key and the type-map key, in that order.
    """

    def __init__(self, keys: KeysCollection = ("inst", "type"), allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 2:
            raise ValueError(f"HoVerNetTargetsd needs two keys (inst, type), got {self.keys}")

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        inst_key, type_key = self.keys
        d.update(compute_targets(d[inst_key], d[type_key]))  # type: ignore[arg-type]
        return d

