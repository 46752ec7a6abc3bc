"""Training of the NASDM mask and patch models (Shrivastava & Fletcher 2023, 4.1): config,
data, trainer, EMA, checkpoints, torchrun/DDP and the ``train()`` entry point."""

from .checkpoint import latest_checkpoint, load_checkpoint, load_data_info, load_type_table, save_checkpoint
from .config import DiffusionSettings, TrainConfig, get_train_preset
from .data import NASDMDataset, batch_indices
from .distributed import DistInfo, init_distributed
from .ema import EMA
from .run import train
from .trainer import NonFiniteLossError, Trainer

__all__ = [
    "DiffusionSettings",
    "DistInfo",
    "EMA",
    "NASDMDataset",
    "NonFiniteLossError",
    "TrainConfig",
    "Trainer",
    "batch_indices",
    "get_train_preset",
    "init_distributed",
    "latest_checkpoint",
    "load_checkpoint",
    "load_data_info",
    "load_type_table",
    "save_checkpoint",
    "train",
]

