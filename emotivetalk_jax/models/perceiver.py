"""Audio-to-lip projector of V-AID: a Perceiver over each frame's audio window (6.2, Fig. 9).

Shape legend: B batch, F frames, W window length (2 * half_width + 1), Da audio feature
width, D width, Q learnable queries (1: "a learnable vector"), Dl lip latent width.

The window is embedded (`embed`, a linear layer, plus a learned position per window slot)
and projected (`proj`). Block 1's query is the learnable latent; every block attends with
keys/values = concat(x, query) along the window axis (as IP-Adapter's Resampler), then a
feed-forward; later blocks take the previous output as query. Each frame is independent:
(B, F) are flattened into one batch axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.models.layers import Attention, layer_norm, linear
from emotivetalk_jax.models.vaid_variants import PerceiverConfig


class FeedForward(nnx.Module):
    """LayerNorm -> Linear(D, mult D) -> GELU -> Linear(mult D, D)."""

    def __init__(self, dim: int, mult: int, *, rngs: nnx.Rngs):
        self.norm = layer_norm(dim, rngs=rngs)
        self.fc1 = linear(dim, dim * mult, bias=False, rngs=rngs)
        self.fc2 = linear(dim * mult, dim, bias=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(self.norm(x)), approximate=False))


class PerceiverBlock(nnx.Module):
    """query (N, Q, D), x (N, W, D) -> (N, Q, D): attention to concat(x, query), then FFN."""

    def __init__(self, dim: int, heads: int, dim_head: int, ff_mult: int, *, rngs: nnx.Rngs):
        self.norm_x = layer_norm(dim, rngs=rngs)
        self.norm_query = layer_norm(dim, rngs=rngs)
        self.attn = Attention(dim, heads=heads, dim_head=dim_head, rngs=rngs)
        self.ff = FeedForward(dim, ff_mult, rngs=rngs)

    def __call__(self, query: jax.Array, x: jax.Array) -> jax.Array:
        q = self.norm_query(query)
        kv = jnp.concatenate([self.norm_x(x), q], axis=-2)
        query = query + self.attn(q, context=kv)
        return query + self.ff(query)


class AudioLipProjector(nnx.Module):
    """A_w (B, F, W, Da) -> l_a (B, F, Dl). Any leading axes are allowed before (W, Da)."""

    def __init__(self, cfg: PerceiverConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        w = 2 * cfg.window_half_width + 1
        self.embed = linear(cfg.audio_dim, cfg.dim, rngs=rngs)
        self.pos_embed = nnx.Param(0.02 * jax.random.normal(rngs.params(), (w, cfg.dim)))
        self.proj = linear(cfg.dim, cfg.dim, rngs=rngs)
        self.latents = nnx.Param(cfg.dim**-0.5 * jax.random.normal(rngs.params(), (cfg.num_queries, cfg.dim)))
        self.blocks = nnx.List(
            [PerceiverBlock(cfg.dim, cfg.heads, cfg.dim_head, cfg.ff_mult, rngs=rngs) for _ in range(cfg.depth)]
        )
        self.norm_out = layer_norm(cfg.dim, rngs=rngs)
        self.proj_out = linear(cfg.num_queries * cfg.dim, cfg.out_dim, rngs=rngs)

    @classmethod
    def from_config(cls, cfg: PerceiverConfig, *, rngs: nnx.Rngs) -> "AudioLipProjector":
        return cls(cfg, rngs=rngs)

    def __call__(self, windows: jax.Array) -> jax.Array:
        lead, (w, da) = windows.shape[:-2], windows.shape[-2:]
        if w != self.pos_embed.shape[0] or da != self.cfg.audio_dim:
            raise ValueError(f"expected audio windows (..., {self.pos_embed.shape[0]}, {self.cfg.audio_dim}), got {windows.shape}")
        x = windows.reshape(-1, w, da)
        x = self.proj(self.embed(x) + self.pos_embed[...])
        query = jnp.broadcast_to(self.latents[...], (x.shape[0], *self.latents.shape)).astype(x.dtype)
        for block in self.blocks:
            query = block(query, x)
        out = self.proj_out(self.norm_out(query).reshape(x.shape[0], -1))
        return out.reshape(*lead, -1)
