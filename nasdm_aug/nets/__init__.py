"""NASDM networks: one improved-diffusion U-Net backbone, its SPADE patch and multi-hot mask configurations."""

from nasdm_aug.nets.presets import PRESETS, UNetConfig, get_preset
from nasdm_aug.nets.spade import ConditionPyramid, SPADEGroupNorm
from nasdm_aug.nets.unet import DiffusionUNet, MaskUNet, PatchUNet, build_model

__all__ = ["UNetConfig", "PRESETS", "get_preset", "build_model", "DiffusionUNet", "PatchUNet", "MaskUNet", "SPADEGroupNorm",
           "ConditionPyramid"]
