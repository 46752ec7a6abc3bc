"""HoVerNet training targets (Graham et al., 2019, Sec. 3.2): nuclei map np, horizontal/vertical
distance maps hv (MONAI's ComputeHoVerMaps) and type map nc, as an array function and a dict transform.
"""

from __future__ import annotations

from typing import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import ComputeHoVerMaps, MapTransform

__all__ = ["as_label_map", "compute_targets", "HoVerNetTargetsd"]

_HOVER = ComputeHoVerMaps(dtype="float32")


def as_label_map(x: np.ndarray | torch.Tensor, name: str = "map") -> np.ndarray:
    """Return an integer label map [H, W] from [H, W] or [1, H, W] (numpy or torch).

    Raises:
        ValueError: the shape is neither, or values are not integral.
    """
    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{name}: expected [H, W] or [1, H, W], got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.equal(np.mod(a, 1), 0)):
            raise ValueError(f"{name}: expected integer labels, got non-integral {a.dtype} values")
    return a.astype(np.int64, copy=False)


def compute_targets(inst: np.ndarray | torch.Tensor, type_map: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
    """Targets of the three branches from an instance map and a type map.

    ComputeHoVerMaps fits as is: it normalises each nucleus's horizontal and vertical distances
    to its centre of mass into [-1, 1], the hv target of HoVerNet. Its per-region loop costs
    O(instances x pixels), which is small for 128-px patches.

    Args:
        inst: instance map [H, W] or [1, H, W], 0 background.
        type_map: type map of the same shape, 0 background, 1..n_types.

    Returns:
        dict with ``np`` long [H, W] (1 inside nuclei), ``hv`` float [2, H, W] (horizontal then
        vertical) and ``nc`` long [H, W] (type ids, 0 background).
    """
    inst_a, type_a = as_label_map(inst, "inst"), as_label_map(type_map, "type")
    if inst_a.shape != type_a.shape:
        raise ValueError(f"inst {inst_a.shape} and type {type_a.shape} shapes differ")
    hv = torch.as_tensor(np.asarray(_HOVER(inst_a[None])), dtype=torch.float32)
    return {
        "np": torch.as_tensor(inst_a > 0, dtype=torch.long),
        "hv": hv,
        # type pixels outside nuclei are ignored: a nucleus-free pixel is background for nc too
        "nc": torch.as_tensor(np.where(inst_a > 0, type_a, 0), dtype=torch.long),
    }


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

