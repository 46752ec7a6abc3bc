"""A HoVerNet on smp encoders for 128-px patches: targets, losses, post-processing, metrics, trainer."""

from hovernet.config import HOVERNET_PRESETS, LossConfig, ModelConfig, PostprocessConfig, HoVerNetConfig, get_hovernet_preset
from hovernet.metrics import (
    HoVerNetMetrics, compute_aji, compute_dice, compute_iou, compute_pq, compute_type_stats, instance_types,
    match_instances, pairwise_iou, pq_from_stats,
)

__all__ = [
    "ModelConfig", "LossConfig", "PostprocessConfig", "HoVerNetConfig", "HOVERNET_PRESETS", "get_hovernet_preset",
    "HoVerNetMetrics", "compute_pq", "compute_aji", "compute_dice", "compute_iou", "compute_type_stats",
    "instance_types", "match_instances", "pairwise_iou", "pq_from_stats",
    # torch-heavy parts load lazily: hovernet.model, .losses, .postprocess, .targets, .data, .trainer, .evaluate
    "HoVerNet", "HoVerNetLoss", "postprocess", "instances_from_np_hv", "compute_targets", "HoVerNetTargetsd",
    "train_hovernet", "evaluate", "load_hovernet", "predict_image",
]

_LAZY = {
    "HoVerNet": "hovernet.model", "HoVerNetLoss": "hovernet.losses", "postprocess": "hovernet.postprocess",
    "instances_from_np_hv": "hovernet.postprocess", "compute_targets": "hovernet.targets",
    "HoVerNetTargetsd": "hovernet.targets", "train_hovernet": "hovernet.trainer", "evaluate": "hovernet.evaluate",
    "load_hovernet": "hovernet.evaluate", "predict_image": "hovernet.evaluate",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hovernet' has no attribute {name!r}")
