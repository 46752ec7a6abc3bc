"""Diffusion math (improved DDPM, Nichol & Dhariwal 2021): schedules, the Gaussian process and its
losses, respacing and training timestep samplers. The model is always an argument."""

from .analytic import DEFAULT_MIXTURE, GaussianMixture1D, OptimalMixtureModel
from .gaussian import GaussianDiffusion, LossType, ModelMeanType, ModelVarType, extract_into_tensor
from .likelihood import approx_standard_normal_cdf, discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .respace import SPACINGS, SpacedDiffusion, create_diffusion, logsnr_timesteps, respace, space_timesteps
from .schedules import BETA_SCHEDULES, betas_for_alpha_bar, get_named_beta_schedule
from .timestep_samplers import (
    SCHEDULE_SAMPLERS,
    LossSecondMomentResampler,
    ScheduleSampler,
    UniformSampler,
    create_named_schedule_sampler,
)

__all__ = [
    "BETA_SCHEDULES",
    "DEFAULT_MIXTURE",
    "GaussianDiffusion",
    "GaussianMixture1D",
    "LossSecondMomentResampler",
    "LossType",
    "ModelMeanType",
    "ModelVarType",
    "OptimalMixtureModel",
    "SCHEDULE_SAMPLERS",
    "ScheduleSampler",
    "SpacedDiffusion",
    "UniformSampler",
    "approx_standard_normal_cdf",
    "betas_for_alpha_bar",
    "create_diffusion",
    "create_named_schedule_sampler",
    "discretized_gaussian_log_likelihood",
    "extract_into_tensor",
    "get_named_beta_schedule",
    "mean_flat",
    "normal_kl",
    "respace",
    "space_timesteps",
    "logsnr_timesteps",
    "SPACINGS",
]
