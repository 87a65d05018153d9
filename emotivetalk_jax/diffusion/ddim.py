"""DDIM in sigma space (REFERENCE.md, "Sampler decision").

With x = x0 + sigma * eps (EDM / VE form) and x0 = D(x; sigma), deterministic DDIM is

    x_next = x0 + (sigma_next / sigma) * (x - x0),

the Euler step of the probability-flow ODE, i.e. diffusers' `EulerDiscreteScheduler`.
With eta > 0 the step splits sigma_next into a deterministic part and fresh noise,
    s_up = eta * sigma_next * sqrt(1 - sigma_next^2 / sigma^2),  s_down = sqrt(sigma_next^2 - s_up^2),
    x_next = x0 + (s_down / sigma) * (x - x0) + s_up * z,
which is DDIM's sigma_t(eta) rewritten in sigma space (eta = 1: ancestral / DDPM-like).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def ancestral_sigmas(sigma: jax.Array, sigma_next: jax.Array, eta: float | jax.Array) -> tuple[jax.Array, jax.Array]:
    """(s_down, s_up) for one DDIM step with stochasticity `eta`; s_up = 0 when eta = 0 or sigma_next = 0."""
    sigma, sigma_next = jnp.asarray(sigma, jnp.float32), jnp.asarray(sigma_next, jnp.float32)
    ratio = jnp.clip(1.0 - (sigma_next / sigma) ** 2, 0.0, 1.0)
    s_up = jnp.minimum(eta * sigma_next * jnp.sqrt(ratio), sigma_next)
    return jnp.sqrt(jnp.maximum(sigma_next**2 - s_up**2, 0.0)), s_up


def ddim_step(
    x: jax.Array,
    x0: jax.Array,
    sigma: jax.Array,
    sigma_next: jax.Array,
    eta: float | jax.Array = 0.0,
    noise: jax.Array | None = None,
) -> jax.Array:
    """One DDIM step from noise level `sigma` to `sigma_next` (scalars) given x0 = D(x; sigma).

    `eta` > 0 needs `noise` (same shape as x, standard normal). eta = 0 is exactly
    `x0 + sigma_next / sigma * (x - x0)`.
    """
    if noise is None:
        if not isinstance(eta, (int, float)) or eta != 0:
            raise ValueError("ddim_step with eta != 0 needs `noise`")
        return x0 + (jnp.asarray(sigma_next) / jnp.asarray(sigma)).astype(x.dtype) * (x - x0)
    s_down, s_up = ancestral_sigmas(sigma, sigma_next, eta)
    return x0 + (s_down / sigma).astype(x.dtype) * (x - x0) + s_up.astype(x.dtype) * noise.astype(x.dtype)
