"""Sampling: samplers sharing one signature and the classifier-free guidance wrapper."""

from .guidance import classifier_free_guidance
from .samplers import (
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    DEFAULT_STEPS_BY_SAMPLER,
    SAMPLERS,
    get_sampler,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_seed,
)

__all__ = [
    "DEFAULT_SAMPLER",
    "DEFAULT_STEPS",
    "DEFAULT_STEPS_BY_SAMPLER",
    "SAMPLERS",
    "classifier_free_guidance",
    "get_sampler",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_seed",
]
