"""Sampling: samplers sharing one signature, their options, and the classifier-free guidance wrapper."""

from .guidance import classifier_free_guidance
from .samplers import (
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    DEFAULT_STEPS_BY_SAMPLER,
    SAMPLERS,
    PerSampleNoise,
    SamplerOptions,
    SamplerSpec,
    get_sampler,
    sample,
    sample_seed,
)

__all__ = [
    "DEFAULT_SAMPLER",
    "DEFAULT_STEPS",
    "DEFAULT_STEPS_BY_SAMPLER",
    "SAMPLERS",
    "PerSampleNoise",
    "SamplerOptions",
    "SamplerSpec",
    "classifier_free_guidance",
    "get_sampler",
    "sample",
    "sample_seed",
]
