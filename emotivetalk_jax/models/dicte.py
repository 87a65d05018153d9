"""Di-CTE: diffusion-based co-speech temporal expansion of the expression latent (3.2, 6.4).

Shape legend: B batch, F frames (prefix included), P prefix frames, N new frames,
W audio window length, Da audio feature width, E expression latent width, D width,
H, W_img portrait size.

`S(e_t, t, x_ref, A_w, e_cond)` predicts the clean expression sequence (x0-prediction,
eq. 7). The transformer runs self-attention over
  [time token, e_cond token, identity token, frame tokens],
with each frame token = embed(e_t[f]) + audio window token(A_w[f]) + sinusoidal frame
position + time embedding (+ a learned "clean" embedding on prefix frames).
The identity token comes from a small conv encoder of the portrait x_ref.

With `cfg.standardise` the model works on z = (e - mean) / scale per dimension, with fixed
`DataStat` statistics of the training e_v (set once at the start of stage 1 and saved with
the weights): e_t, the prediction and the clean prefix are in z; `cond.e_cond` is given as
e and standardised here. The samplers and the loss convert at their edges
(`standardise` / `destandardise`; the identity without `cfg.standardise`).
With `cfg.cond_residual` the prediction is (standardised) e_cond + the output projection.

The noise schedule and the sampler are in `diffusion.dicte` (one chunk) and
`diffusion.long_dicte` (any length); the training loss in `losses.dicte_loss`.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.models.layers import (
    Attention, TimestepEmbedding, conv, group_norm, layer_norm, linear, timestep_embedding,
)
from emotivetalk_jax.models.vaid_variants import DiCTEConfig


class DataStat(nnx.Param):
    """A fixed statistic of the training data (never updated by an optimiser: the stage-1
    parameter filter leaves it out); saved and loaded with the parameters."""


class DataStats(nnx.Module):
    """Per-dimension `mean` and `scale` of e_v (identity until set: 0 and 1)."""

    def __init__(self, dim: int):
        self.mean = DataStat(jnp.zeros((dim,), jnp.float32))
        self.scale = DataStat(jnp.ones((dim,), jnp.float32))


class DiCTECond(NamedTuple):
    """Conditions of one Di-CTE call. `audio` covers every frame, prefix frames included."""

    audio: jax.Array  # (B, F, W, Da) audio windows A_w
    portrait: jax.Array  # (B, H, W_img, 3) x_ref in [-1, 1]
    e_cond: jax.Array  # (B, E) expression condition (first GT frame in training)


# A denoiser: (e_t (B, F, E), t (B,), cond, clean (B, F) bool) -> predicted e_0 (B, F, E).
Denoiser = Callable[[jax.Array, jax.Array, DiCTECond, jax.Array], jax.Array]


def sinusoidal_positions(num: int, dim: int) -> jax.Array:
    """(num, dim) transformer position encoding of frame indices 0..num-1."""
    return timestep_embedding(jnp.arange(num), dim, flip_sin_to_cos=True, downscale_freq_shift=0.0)


class IdentityEncoder(nnx.Module):
    """Portrait (B, H, W_img, 3) -> identity token (B, D): strided convs, global mean, linear."""

    def __init__(self, channels: tuple[int, ...], dim: int, res: int, *, rngs: nnx.Rngs):
        self.res = res
        self.conv_in = conv(3, channels[0], 3, padding=1, rngs=rngs)
        self.downs = nnx.List(
            [conv(c_in, c_out, 3, stride=2, padding=1, rngs=rngs) for c_in, c_out in zip(channels, channels[1:])]
        )
        self.norm = group_norm(channels[-1], eps=1e-6, groups=math.gcd(32, channels[-1]), rngs=rngs)
        self.proj = linear(channels[-1], dim, rngs=rngs)

    def __call__(self, image: jax.Array) -> jax.Array:
        if image.shape[1:3] != (self.res, self.res):
            image = jax.image.resize(image, (image.shape[0], self.res, self.res, image.shape[-1]), "bilinear")
        h = jax.nn.silu(self.conv_in(image))
        for down in self.downs:
            h = jax.nn.silu(down(h))
        h = jax.nn.silu(self.norm(h))
        return self.proj(h.mean(axis=(1, 2)))


class TransformerBlock(nnx.Module):
    """Pre-norm self-attention + GELU MLP over (B, T, D)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, *, rngs: nnx.Rngs):
        self.norm1 = layer_norm(dim, rngs=rngs)
        self.attn = Attention(dim, heads=heads, dim_head=dim // heads, rngs=rngs)
        self.norm2 = layer_norm(dim, rngs=rngs)
        self.fc1 = linear(dim, dim * mlp_ratio, rngs=rngs)
        self.fc2 = linear(dim * mlp_ratio, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x))))


class DiCTE(nnx.Module):
    """x0-predicting denoiser over expression sequences (see module docstring)."""

    def __init__(self, cfg: DiCTEConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, w = cfg.dim, 2 * cfg.window_half_width + 1
        self.proj_in = linear(cfg.expr_dim, d, rngs=rngs)
        self.audio_proj = TimestepEmbedding(w * cfg.audio_dim, d, rngs=rngs)  # linear -> SiLU -> linear
        self.time_embedding = TimestepEmbedding(d, d, rngs=rngs)
        self.cond_proj = linear(cfg.expr_dim, d, rngs=rngs)
        self.identity_encoder = IdentityEncoder(cfg.identity_channels, d, cfg.identity_res, rngs=rngs)
        self.clean_embed = nnx.Param(0.02 * jax.random.normal(rngs.params(), (d,)))
        self.blocks = nnx.List([TransformerBlock(d, cfg.heads, cfg.mlp_ratio, rngs=rngs) for _ in range(cfg.depth)])
        self.norm_out = layer_norm(d, rngs=rngs)
        self.proj_out = linear(d, cfg.expr_dim, rngs=rngs)
        if cfg.standardise:
            self.stats = DataStats(cfg.expr_dim)

    def standardise(self, e: jax.Array) -> jax.Array:
        """e (..., E) in e_v's units -> the model's z = (e - mean) / scale."""
        if not self.cfg.standardise:
            return e
        return (e - self.stats.mean[...].astype(e.dtype)) / self.stats.scale[...].astype(e.dtype)

    def destandardise(self, z: jax.Array) -> jax.Array:
        """The model's z (..., E) -> e_v's units."""
        if not self.cfg.standardise:
            return z
        return z * self.stats.scale[...].astype(z.dtype) + self.stats.mean[...].astype(z.dtype)

    @classmethod
    def from_config(cls, cfg: DiCTEConfig, *, rngs: nnx.Rngs) -> "DiCTE":
        return cls(cfg, rngs=rngs)

    def __call__(self, e_t: jax.Array, t: jax.Array, cond: DiCTECond, clean: jax.Array | None = None) -> jax.Array:
        b, f, _ = e_t.shape
        if cond.audio.shape[:2] != (b, f):
            raise ValueError(f"audio windows {cond.audio.shape} do not cover the {f} frames of e_t {e_t.shape}")
        d = self.cfg.dim
        temb = self.time_embedding(timestep_embedding(1000.0 * t, d, flip_sin_to_cos=True, downscale_freq_shift=0.0))
        frames = self.proj_in(e_t) + self.audio_proj(cond.audio.reshape(b, f, -1))
        frames = frames + sinusoidal_positions(f, d)[None] + temb[:, None]
        if clean is not None:
            frames = frames + clean[..., None].astype(frames.dtype) * self.clean_embed[...]
        e_cond = self.standardise(cond.e_cond)
        tokens = jnp.stack([temb, self.cond_proj(e_cond), self.identity_encoder(cond.portrait)], axis=1)
        h = jnp.concatenate([tokens, frames], axis=1)
        for block in self.blocks:
            h = block(h)
        out = self.proj_out(self.norm_out(h[:, tokens.shape[1]:]))
        return out + e_cond[:, None].astype(out.dtype) if self.cfg.cond_residual else out
