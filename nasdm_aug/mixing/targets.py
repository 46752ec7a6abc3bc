"""HoVerNet's training targets (Graham et al., 2019, Sec. 3.2) from an instance map and a type map:
the nuclei map np, the horizontal / vertical distance maps hv (MONAI's ``ComputeHoVerMaps``) and
the type map nc. One function for the MONAI transform here (``HoVerTargetsd``) and for
``hovernet.targets``, which sits on a floor above and wraps it in torch tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from monai.transforms import ComputeHoVerMaps

__all__ = ["as_label_map", "hover_targets"]

# ComputeHoVerMaps fits as is: it normalises each nucleus's horizontal and vertical distances to its
# centre of mass into [-1, 1], the hv target of HoVerNet. Its per-region loop costs
# O(instances x pixels), which is small for 128-px patches.
_HOVER = ComputeHoVerMaps(dtype="float32")


def as_label_map(x: Any, name: str = "map") -> np.ndarray:
    """Return an int64 label map [H, W] from [H, W] or [1, H, W] (numpy or torch).

    Raises:
        ValueError: the shape is neither, or values are not integral.
    """
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{name}: expected [H, W] or [1, H, W], got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.equal(np.mod(a, 1), 0)):
            raise ValueError(f"{name}: expected integer labels, got non-integral {a.dtype} values")
    return a.astype(np.int64, copy=False)


def hover_targets(inst: Any, type_map: Any) -> dict[str, np.ndarray]:
    """Targets of the three HoVerNet branches.

    Args:
        inst: instance map [H, W] or [1, H, W], 0 background (numpy or torch).
        type_map: type map of the same shape, 0 background, 1..n_types.

    Returns:
        ``np`` int64 [H, W] (1 inside nuclei), ``hv`` float32 [2, H, W] (horizontal then vertical),
        ``nc`` int64 [H, W] (type ids inside nuclei, 0 elsewhere).

    Raises:
        ValueError: the two maps differ in shape or are not label maps.
    """
    inst_a, type_a = as_label_map(inst, "inst"), as_label_map(type_map, "type")
    if inst_a.shape != type_a.shape:
        raise ValueError(f"inst {inst_a.shape} and type {type_a.shape} shapes differ")
    return {
        "np": (inst_a > 0).astype(np.int64),
        "hv": np.asarray(_HOVER(inst_a[None]), dtype=np.float32),
        # type pixels outside nuclei are ignored: a nucleus-free pixel is background for nc too
        "nc": np.where(inst_a > 0, type_a, 0).astype(np.int64),
    }
