"""SVD's spatio-temporal transformer, channels-last, with diffusers attribute names.

Shape legend: B batch, F frames, H, W spatial, C channels (= heads * head dim), T context
tokens, D context width, S = H*W spatial tokens.

`TransformerSpatioTemporalModel` runs, per layer, a spatial `BasicTransformerBlock` over
the S tokens of every frame, then a `TemporalBasicTransformerBlock` over the F frames of
every spatial position, and blends the two with an `AlphaBlender`. Subclasses extend the
blocks (extra cross-attention, injectors) by overriding `spatial_block_cls` /
`temporal_block_cls`; keyword arguments given to the model's `__call__` beyond the
standard ones are forwarded to both blocks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.models.layers import Attention, TimestepEmbedding, group_norm, layer_norm, linear, timestep_embedding
from emotivetalk_jax.models.resnet import AlphaBlender


class Placeholder(nnx.Module):
    """A parameterless slot (torch `nn.Dropout` at inference) that keeps list indices aligned."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return x


class GEGLU(nnx.Module):
    """diffusers `GEGLU`: proj -> (h, gate) halves -> h * gelu(gate) (exact erf GELU)."""

    def __init__(self, dim_in: int, dim_out: int, *, rngs: nnx.Rngs, dtype=None):
        self.proj = linear(dim_in, dim_out * 2, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        h, gate = jnp.split(self.proj(x), 2, axis=-1)
        return h * jax.nn.gelu(gate, approximate=False)


class FeedForward(nnx.Module):
    """diffusers `FeedForward` with GEGLU: `net` = [GEGLU, dropout slot, Linear]; (..., C) -> (..., C')."""

    def __init__(self, dim: int, dim_out: int | None = None, *, mult: int = 4, rngs: nnx.Rngs, dtype=None):
        inner = dim * mult
        self.net = nnx.List(
            [
                GEGLU(dim, inner, rngs=rngs, dtype=dtype),
                Placeholder(),
                linear(inner, dim_out or dim, rngs=rngs, dtype=dtype),
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nnx.Module):
    """diffusers `BasicTransformerBlock` as SVD uses it (layer norms, GEGLU, no ada-norm).

    x: (N, S, C) tokens; context: (N, T, D). Pre-norm residual self-attn, cross-attn, FF.
    """

    def __init__(
        self, dim: int, heads: int, head_dim: int, *, cross_attention_dim: int | None, rngs: nnx.Rngs, dtype=None
    ):
        self.norm1 = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.attn1 = Attention(dim, heads=heads, dim_head=head_dim, rngs=rngs, dtype=dtype)
        self.norm2 = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.attn2 = Attention(
            dim, heads=heads, dim_head=head_dim, cross_attention_dim=cross_attention_dim, rngs=rngs, dtype=dtype
        )
        self.norm3 = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.ff = FeedForward(dim, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, context: jax.Array | None, **extra) -> jax.Array:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        x = self.after_cross_attention(x, **extra)
        return x + self.ff(self.norm3(x))

    def after_cross_attention(self, x: jax.Array, **extra) -> jax.Array:
        """Hook between cross-attention and FF (ETHD injects EDI here); identity in SVD."""
        return x


class TemporalBasicTransformerBlock(nnx.Module):
    """diffusers `TemporalBasicTransformerBlock`: attention along frames.

    x: (B*F, S, C) -> regrouped to (B*S, F, C); context: (B*S, T, D). norm_in + ff_in
    (residual only when dim == time_mix_inner_dim), self-attn over frames, cross-attn,
    FF (residual only when dims match, as in diffusers).
    """

    def __init__(
        self,
        dim: int,
        time_mix_inner_dim: int,
        heads: int,
        head_dim: int,
        *,
        cross_attention_dim: int | None,
        rngs: nnx.Rngs,
        dtype=None,
    ):
        inner = time_mix_inner_dim
        self.is_res = dim == inner
        self.norm_in = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.ff_in = FeedForward(dim, inner, rngs=rngs, dtype=dtype)
        self.norm1 = layer_norm(inner, rngs=rngs, dtype=dtype)
        self.attn1 = Attention(inner, heads=heads, dim_head=head_dim, rngs=rngs, dtype=dtype)
        if cross_attention_dim is not None:
            self.norm2 = layer_norm(inner, rngs=rngs, dtype=dtype)
            self.attn2 = Attention(
                inner, heads=heads, dim_head=head_dim, cross_attention_dim=cross_attention_dim, rngs=rngs, dtype=dtype
            )
        else:
            self.norm2 = self.attn2 = None
        self.norm3 = layer_norm(inner, rngs=rngs, dtype=dtype)
        self.ff = FeedForward(inner, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, num_frames: int, context: jax.Array | None, **extra) -> jax.Array:
        bf, s, c = x.shape
        b = bf // num_frames
        x = x.reshape(b, num_frames, s, c).transpose(0, 2, 1, 3).reshape(b * s, num_frames, c)
        h = self.ff_in(self.norm_in(x))
        x = h + x if self.is_res else h
        x = x + self.attn1(self.norm1(x))
        if self.attn2 is not None:
            x = x + self.attn2(self.norm2(x), context)
        x = self.after_cross_attention(x, b, **extra)
        h = self.ff(self.norm3(x))
        x = h + x if self.is_res else h
        c = x.shape[-1]
        return x.reshape(b, s, num_frames, c).transpose(0, 2, 1, 3).reshape(bf, s, c)

    def after_cross_attention(self, x: jax.Array, batch: int, **extra) -> jax.Array:
        """Hook between cross-attention and FF on (B*S, F, C) tokens (ETHD's temporal
        expression attention); identity in SVD."""
        return x


class TransformerSpatioTemporalModel(nnx.Module):
    """diffusers `TransformerSpatioTemporalModel`: (B*F, H, W, C) -> (B*F, H, W, C).

    context: (B*F, T, D) (the UNet repeats it per frame). The temporal blocks attend to the
    context of each video's FIRST frame, broadcast over its H*W positions, as diffusers does.
    """

    spatial_block_cls = BasicTransformerBlock
    temporal_block_cls = TemporalBasicTransformerBlock

    def __init__(
        self,
        heads: int,
        head_dim: int,
        in_channels: int,
        *,
        num_layers: int = 1,
        cross_attention_dim: int | None = None,
        rngs: nnx.Rngs,
        dtype=None,
    ):
        inner = heads * head_dim
        if inner != in_channels:
            # diffusers adds a C-wide frame embedding to inner-wide tokens; only equal widths run.
            raise ValueError(f"heads * head_dim ({inner}) must equal in_channels ({in_channels})")
        self.in_channels = in_channels
        self.norm = group_norm(in_channels, eps=1e-6, rngs=rngs, dtype=dtype)
        self.proj_in = linear(in_channels, inner, rngs=rngs, dtype=dtype)
        self.transformer_blocks = nnx.List(
            [
                self.spatial_block_cls(
                    inner, heads, head_dim, cross_attention_dim=cross_attention_dim, rngs=rngs, dtype=dtype
                )
                for _ in range(num_layers)
            ]
        )
        self.temporal_transformer_blocks = nnx.List(
            [
                self.temporal_block_cls(
                    inner, inner, heads, head_dim, cross_attention_dim=cross_attention_dim, rngs=rngs, dtype=dtype
                )
                for _ in range(num_layers)
            ]
        )
        self.time_pos_embed = TimestepEmbedding(in_channels, in_channels * 4, out_dim=in_channels, rngs=rngs, dtype=dtype)
        self.time_mixer = AlphaBlender(0.5, "learned_with_images")
        self.proj_out = linear(inner, in_channels, rngs=rngs, dtype=dtype)

    def temporal_context(self, context: jax.Array) -> jax.Array:
        """The temporal blocks' context from the per-frame one: (B, F, T, D) -> (B, T, D).

        diffusers takes the first frame's; subclasses may override (hook)."""
        return context[:, 0]

    def frame_embedding(self, num_frames: int, dtype) -> jax.Array:
        """Sinusoidal position of each frame (flip_sin_to_cos, shift 0) through time_pos_embed: (F, C)."""
        pos = timestep_embedding(jnp.arange(num_frames), self.in_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        return self.time_pos_embed(pos.astype(dtype))

    def __call__(
        self, x: jax.Array, context: jax.Array | None, image_only_indicator: jax.Array, **extra
    ) -> jax.Array:
        """x: (B*F, H, W, C); context: (B*F, T, D); image_only_indicator: (B, F); extra -> blocks."""
        bf, h, w, c = x.shape
        b, f = image_only_indicator.shape
        time_context = None
        if context is not None:
            per_video = self.temporal_context(context.reshape(b, f, *context.shape[1:]))  # (B, T, D)
            time_context = jnp.broadcast_to(per_video[:, None], (b, h * w, *per_video.shape[1:]))
            time_context = time_context.reshape(b * h * w, *per_video.shape[1:])
        residual = x
        hs = self.proj_in(self.norm(x).reshape(bf, h * w, c))
        emb = self.frame_embedding(f, hs.dtype)  # (F, C)
        emb = jnp.broadcast_to(emb[None], (b, f, emb.shape[-1])).reshape(bf, 1, -1)
        for block, temporal_block in zip(self.transformer_blocks, self.temporal_transformer_blocks):
            hs = block(hs, context, **extra)
            mix = temporal_block(hs + emb, f, time_context, **extra)
            hs = self.time_mixer(hs, mix, image_only_indicator, f)
        out = self.proj_out(hs).reshape(bf, h, w, c)
        return out + residual
