"""Di-CTE's noise schedule and its one-chunk DDIM sampler (3.2, 6.4).

Shape legend: B batch, F frames (prefix included), P prefix frames, N new frames, E
expression latent width.

Schedule (our choice; the paper says DDPM): the continuous cosine schedule
alpha_bar(t) = cos(pi t / 2)^2, t in [0, 1]; e_t = sqrt(ab) e_0 + sqrt(1 - ab) eps; t = 1 is
pure noise. Sampling is deterministic DDIM on a uniform t grid from 1 to 0 in a `lax.scan`
(`cosine_ddim_step`; the backbone's DDIM in EDM sigma space is `diffusion.ddim.ddim_step`).
Prefix-guided continuation: P clean frames are concatenated before the noise, marked
clean, and held fixed at every step; training gives the first `prefix_frames` frames of a
window clean with probability `prefix_ratio` (see `losses.dicte_loss`). Any-length
sampling by chunks is `diffusion.long_dicte`.

A Di-CTE with `standardise` denoises z = (e - mean) / scale (`models.dicte`): `sample_dicte`
takes the prefix and returns the frames in e_v's units, converting at its edges (`edges`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.models.dicte import Denoiser, DiCTECond


def alpha_bar(t: jax.Array) -> jax.Array:
    """Cosine schedule: 1 at t = 0 (clean), 0 at t = 1 (pure noise)."""
    return jnp.cos(0.5 * jnp.pi * t) ** 2


def add_noise(x0: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
    """e_t for per-sample t (B,) and x0, eps (B, F, E)."""
    ab = alpha_bar(t)[:, None, None]
    return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * eps


def cosine_ddim_step(x: jax.Array, x0: jax.Array, t: jax.Array, s: jax.Array) -> jax.Array:
    """Deterministic DDIM in cosine-schedule time, from t to s < t given the predicted clean
    x0 (scalars t, s)."""
    ab_t, ab_s = alpha_bar(t), alpha_bar(s)
    eps = (x - jnp.sqrt(ab_t) * x0) / jnp.sqrt(jnp.maximum(1.0 - ab_t, 1e-12))
    return jnp.sqrt(ab_s) * x0 + jnp.sqrt(1.0 - ab_s) * eps


def edges(model: Denoiser) -> tuple[Callable[[jax.Array], jax.Array], Callable[[jax.Array], jax.Array]]:
    """(to the model's space, back to e_v's units): a Di-CTE's `standardise` / `destandardise`;
    the identity for a denoiser without them."""
    if hasattr(model, "standardise"):
        return model.standardise, model.destandardise
    return (lambda e: e), (lambda z: z)


def _bind(model: Denoiser) -> tuple[Callable[[], Denoiser], object]:
    """Split an NNX model so a `lax.scan` body can rebuild it from carried-in state."""
    if isinstance(model, nnx.Module):
        graphdef, state = nnx.split(model)
        return (lambda st: nnx.merge(graphdef, st)), state
    return (lambda st: model), None


def sample_dicte(
    model: Denoiser,
    cond: DiCTECond,
    num_frames: int,
    key: jax.Array,
    steps: int = 25,
    prefix: jax.Array | None = None,
) -> jax.Array:
    """Deterministic DDIM from pure noise: -> (B, N, E) new expression frames (e_v's units).

    `prefix` (B, P, E) clean frames (the end of the previous chunk, e_v's units) are
    concatenated before the noise and held fixed; `cond.audio` then covers P + N frames.
    """
    to_model, from_model = edges(model)
    b = cond.e_cond.shape[0]
    e = cond.e_cond.shape[-1]
    p = 0 if prefix is None else prefix.shape[1]
    total = p + num_frames
    if cond.audio.shape[1] != total:
        raise ValueError(f"cond.audio covers {cond.audio.shape[1]} frames; need prefix {p} + new {num_frames}")
    clean = jnp.broadcast_to(jnp.arange(total) < p, (b, total))
    known = jnp.zeros((b, total, e), cond.e_cond.dtype)
    if prefix is not None:
        known = known.at[:, :p].set(to_model(prefix.astype(known.dtype)))
    x = jax.random.normal(key, (b, total, e), known.dtype)
    x = jnp.where(clean[..., None], known, x)
    ts = jnp.linspace(1.0, 0.0, steps + 1)
    rebuild, state = _bind(model)

    def body(x, ts_pair):
        t, s = ts_pair
        x0 = rebuild(state)(x, jnp.full((b,), t), cond, clean)
        x0 = jnp.where(clean[..., None], known, x0)
        return jnp.where(clean[..., None], known, cosine_ddim_step(x, x0, t, s)), None

    x, _ = jax.lax.scan(body, x, (ts[:-1], ts[1:]))
    return from_model(x[:, p:])

__all__ = ["alpha_bar", "add_noise", "cosine_ddim_step", "edges", "sample_dicte"]
