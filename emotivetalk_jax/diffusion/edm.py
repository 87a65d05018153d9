"""SVD's EDM parameterisation: preconditioning, Karras sigmas, the denoiser D(x; sigma).

SVD is an EDM v-prediction model (REFERENCE.md §2):
    c_skip = 1 / (s^2 + 1),  c_out = -s / sqrt(s^2 + 1),  c_in = 1 / sqrt(s^2 + 1),
    c_noise = 0.25 ln s,     D(x; s) = c_skip x + c_out F(c_in x; c_noise).
The backbone F is any callable; conditions pass through untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 700.0, 7.0


class Precond(NamedTuple):
    c_skip: jax.Array
    c_out: jax.Array
    c_in: jax.Array
    c_noise: jax.Array


def precondition(sigma: jax.Array) -> Precond:
    """EDM v-prediction coefficients for noise level(s) `sigma` (any shape)."""
    sigma = jnp.asarray(sigma, jnp.float32)
    s2 = sigma**2 + 1.0
    return Precond(1.0 / s2, -sigma / jnp.sqrt(s2), 1.0 / jnp.sqrt(s2), 0.25 * jnp.log(sigma))


def karras_sigmas(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO) -> jax.Array:
    """`n` noise levels from sigma_max down to sigma_min (Karras et al. 2022), then a final 0: (n + 1,).

    Computed in float64 and rounded once to float32, as diffusers' `EulerDiscreteScheduler` does,
    so both walk the same sigmas bit for bit.
    """
    ramp = np.linspace(0.0, 1.0, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return jnp.asarray(np.concatenate([sigmas, [0.0]]).astype(np.float32))


def init_noise_sigma(sigma_max: float = SIGMA_MAX) -> float:
    """Std of the starting latent: sqrt(sigma_max^2 + 1) (data std 1 plus noise), as SVD's pipeline."""
    return float(np.sqrt(sigma_max**2 + 1.0))


def _expand(c: jax.Array, x: jax.Array) -> jax.Array:
    """Broadcast per-sample coefficients (B,) or scalars over x (B, ...)."""
    c = jnp.asarray(c, x.dtype)
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


def denoise(backbone: Callable[..., jax.Array], x: jax.Array, sigma: jax.Array, *args, **kwargs) -> jax.Array:
    """D(x; sigma): the clean-sample estimate from the preconditioned backbone.

    `backbone(scaled_x, c_noise, *args, **kwargs)` -> raw output F; `sigma` is a scalar or (B,).
    """
    p = precondition(sigma)
    c_noise = jnp.broadcast_to(p.c_noise, x.shape[:1]) if p.c_noise.ndim == 0 else p.c_noise
    raw = backbone(x * _expand(p.c_in, x), c_noise, *args, **kwargs)
    return _expand(p.c_skip, x) * x + _expand(p.c_out, x) * raw.astype(x.dtype)


def edm_loss_weight(sigma: jax.Array) -> jax.Array:
    """EDM's lambda(sigma) = (s^2 + 1) / s^2 for sigma_data = 1, making the x0 loss unit-variance."""
    sigma = jnp.asarray(sigma, jnp.float32)
    return (sigma**2 + 1.0) / sigma**2
