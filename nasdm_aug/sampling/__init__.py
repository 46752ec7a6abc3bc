"""Sampling: samplers sharing one signature, their options, and the classifier-free guidance wrapper."""

from .guidance import check_guidance_interval, classifier_free_guidance, guided_timesteps
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
    "check_guidance_interval",
    "classifier_free_guidance",
    "guided_timesteps",
    "get_sampler",
    "sample",
    "sample_seed",
]
