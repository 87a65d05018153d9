"""The down, mid and up blocks of SVD's UNet, channels-last, with diffusers attribute names.

Shape legend: B batch, F frames, H, W spatial, C channels, E time-embedding width,
T context tokens, D context width. Every block takes x (B*F, H, W, C), temb (B*F, E),
context (B*F, T, D) and image_only_indicator (B, F); blocks without attention ignore
the context and any extra keyword arguments (which cross-attention blocks forward to
their transformers).

The resnet epsilons are diffusers' actual values: 1e-5 in `DownBlockSpatioTemporal` and
the mid block, 1e-6 in the cross-attention down block and in both up blocks (the UNet's
`resnet_eps=1e-5` never reaches the spatio-temporal blocks).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.models.resnet import Downsample2D, SpatioTemporalResBlock, Upsample2D
from emotivetalk_jax.models.transformer import TransformerSpatioTemporalModel


def _per_layer(value: int | tuple[int, ...], num_layers: int) -> tuple[int, ...]:
    return (value,) * num_layers if isinstance(value, int) else tuple(value)


def _transformer(cls, channels: int, heads: int, num_layers: int, cross_attention_dim: int, rngs, dtype):
    return cls(
        heads, channels // heads, channels, num_layers=num_layers, cross_attention_dim=cross_attention_dim,
        rngs=rngs, dtype=dtype,
    )


class DownBlockSpatioTemporal(nnx.Module):
    """Resnets (eps 1e-5), then an optional stride-2 conv. Returns (x, skip states)."""

    has_cross_attention = False

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, *, num_layers: int = 1,
                 add_downsample: bool = True, rngs: nnx.Rngs, dtype=None):
        self.resnets = nnx.List([
            SpatioTemporalResBlock(in_channels if i == 0 else out_channels, out_channels, temb_channels=temb_channels,
                                   eps=1e-5, rngs=rngs, dtype=dtype)
            for i in range(num_layers)
        ])
        self.downsamplers = (
            nnx.List([Downsample2D(out_channels, out_channels, padding=1, rngs=rngs, dtype=dtype)])
            if add_downsample else None
        )

    def __call__(self, x, temb, context, image_only_indicator, **extra) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        f = image_only_indicator.shape[1]
        states = ()
        for resnet in self.resnets:
            x = resnet(x, temb, image_only_indicator, f)
            states += (x,)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            states += (x,)
        return x, states


class CrossAttnDownBlockSpatioTemporal(nnx.Module):
    """Pairs of (resnet eps 1e-6, spatio-temporal transformer), then an optional downsample."""

    has_cross_attention = True

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, *, num_layers: int = 1,
                 transformer_layers_per_block: int | tuple[int, ...] = 1, num_attention_heads: int = 1,
                 cross_attention_dim: int = 1280, add_downsample: bool = True,
                 transformer_cls=TransformerSpatioTemporalModel, rngs: nnx.Rngs, dtype=None):
        depth = _per_layer(transformer_layers_per_block, num_layers)
        self.resnets = nnx.List([
            SpatioTemporalResBlock(in_channels if i == 0 else out_channels, out_channels, temb_channels=temb_channels,
                                   eps=1e-6, rngs=rngs, dtype=dtype)
            for i in range(num_layers)
        ])
        self.attentions = nnx.List([
            _transformer(transformer_cls, out_channels, num_attention_heads, depth[i], cross_attention_dim, rngs, dtype)
            for i in range(num_layers)
        ])
        self.downsamplers = (
            nnx.List([Downsample2D(out_channels, out_channels, padding=1, rngs=rngs, dtype=dtype)])
            if add_downsample else None
        )

    def __call__(self, x, temb, context, image_only_indicator, **extra) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        f = image_only_indicator.shape[1]
        states = ()
        for resnet, attn in zip(self.resnets, self.attentions):
            x = resnet(x, temb, image_only_indicator, f)
            x = attn(x, context, image_only_indicator, **extra)
            states += (x,)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            states += (x,)
        return x, states


class UNetMidBlockSpatioTemporal(nnx.Module):
    """resnets[0], then (transformer, resnet) pairs; resnets use eps 1e-5."""

    has_cross_attention = True

    def __init__(self, in_channels: int, temb_channels: int, *, num_layers: int = 1,
                 transformer_layers_per_block: int | tuple[int, ...] = 1, num_attention_heads: int = 1,
                 cross_attention_dim: int = 1280, transformer_cls=TransformerSpatioTemporalModel,
                 rngs: nnx.Rngs, dtype=None):
        depth = _per_layer(transformer_layers_per_block, num_layers)
        self.resnets = nnx.List([
            SpatioTemporalResBlock(in_channels, in_channels, temb_channels=temb_channels, eps=1e-5, rngs=rngs,
                                   dtype=dtype)
            for _ in range(num_layers + 1)
        ])
        self.attentions = nnx.List([
            _transformer(transformer_cls, in_channels, num_attention_heads, depth[i], cross_attention_dim, rngs, dtype)
            for i in range(num_layers)
        ])

    def __call__(self, x, temb, context, image_only_indicator, **extra) -> jax.Array:
        f = image_only_indicator.shape[1]
        x = self.resnets[0](x, temb, image_only_indicator, f)
        for attn, resnet in zip(self.attentions, list(self.resnets)[1:]):
            x = attn(x, context, image_only_indicator, **extra)
            x = resnet(x, temb, image_only_indicator, f)
        return x


def _up_resnets(in_channels, prev_output_channel, out_channels, temb_channels, num_layers, rngs, dtype):
    blocks = []
    for i in range(num_layers):
        skip = in_channels if i == num_layers - 1 else out_channels
        cin = prev_output_channel if i == 0 else out_channels
        blocks.append(SpatioTemporalResBlock(cin + skip, out_channels, temb_channels=temb_channels, eps=1e-6,
                                             rngs=rngs, dtype=dtype))
    return nnx.List(blocks)


class UpBlockSpatioTemporal(nnx.Module):
    """Resnets over [x, skip] concatenated on channels (eps 1e-6), then an optional 2x upsample."""

    has_cross_attention = False

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int, *,
                 num_layers: int = 1, add_upsample: bool = True, rngs: nnx.Rngs, dtype=None):
        self.resnets = _up_resnets(in_channels, prev_output_channel, out_channels, temb_channels, num_layers, rngs,
                                   dtype)
        self.upsamplers = (
            nnx.List([Upsample2D(out_channels, out_channels, rngs=rngs, dtype=dtype)]) if add_upsample else None
        )

    def __call__(self, x, skips, temb, context, image_only_indicator, upsample_size=None, **extra) -> jax.Array:
        """skips: the block's skip states, consumed from the last."""
        f = image_only_indicator.shape[1]
        for resnet in self.resnets:
            x, skips = jnp.concatenate([x, skips[-1]], axis=-1), skips[:-1]
            x = resnet(x, temb, image_only_indicator, f)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class CrossAttnUpBlockSpatioTemporal(nnx.Module):
    """(resnet over [x, skip], transformer) pairs, then an optional 2x upsample."""

    has_cross_attention = True

    def __init__(self, in_channels: int, out_channels: int, prev_output_channel: int, temb_channels: int, *,
                 num_layers: int = 1, transformer_layers_per_block: int | tuple[int, ...] = 1,
                 num_attention_heads: int = 1, cross_attention_dim: int = 1280, add_upsample: bool = True,
                 transformer_cls=TransformerSpatioTemporalModel, rngs: nnx.Rngs, dtype=None):
        depth = _per_layer(transformer_layers_per_block, num_layers)
        self.resnets = _up_resnets(in_channels, prev_output_channel, out_channels, temb_channels, num_layers, rngs,
                                   dtype)
        self.attentions = nnx.List([
            _transformer(transformer_cls, out_channels, num_attention_heads, depth[i], cross_attention_dim, rngs, dtype)
            for i in range(num_layers)
        ])
        self.upsamplers = (
            nnx.List([Upsample2D(out_channels, out_channels, rngs=rngs, dtype=dtype)]) if add_upsample else None
        )

    def __call__(self, x, skips, temb, context, image_only_indicator, upsample_size=None, **extra) -> jax.Array:
        f = image_only_indicator.shape[1]
        for resnet, attn in zip(self.resnets, self.attentions):
            x, skips = jnp.concatenate([x, skips[-1]], axis=-1), skips[:-1]
            x = resnet(x, temb, image_only_indicator, f)
            x = attn(x, context, image_only_indicator, **extra)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x
