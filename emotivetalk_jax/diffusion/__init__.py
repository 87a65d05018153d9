"""Diffusion: SVD's EDM parameterisation, DDIM in sigma space, window fusion, CFG, the video sampler."""

from emotivetalk_jax.diffusion.ddim import ancestral_sigmas, ddim_step
from emotivetalk_jax.diffusion.edm import (
    Precond,
    denoise,
    edm_loss_weight,
    init_noise_sigma,
    karras_sigmas,
    precondition,
)
from emotivetalk_jax.diffusion.guidance import Branches, Conditions, combine, drop, guidance_mode
from emotivetalk_jax.diffusion.long_dicte import sample_long
from emotivetalk_jax.diffusion.sampler import SamplerConfig, SamplerState, compiled_programs, lower, plan, sample
from emotivetalk_jax.diffusion.windows import fusion_weights, num_windows, window_starts

__all__ = [
    "Branches", "Conditions", "Precond", "SamplerConfig", "SamplerState", "ancestral_sigmas", "combine",
    "compiled_programs", "ddim_step",
    "denoise", "drop", "edm_loss_weight", "fusion_weights", "guidance_mode", "init_noise_sigma", "karras_sigmas",
    "lower", "num_windows", "plan", "precondition", "sample", "sample_long", "window_starts",
]
