"""SVD's residual blocks, channels-last, with diffusers attribute names.

Shape legend: B batch, F frames, H, W spatial, C channels, D embedding width.
Spatial blocks take (B*F, H, W, C) (or (B, H, W, C) for plain images); temporal blocks
take (B, F, H, W, C). `image_only_indicator` is (B, F): 1 where a frame is a still image.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.models.layers import conv, group_norm, linear


class ResnetBlock2D(nnx.Module):
    """diffusers `ResnetBlock2D` (default "default" time-embedding norm, no up/down)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        temb_channels: int | None = None,
        eps: float = 1e-6,
        groups: int = 32,
        output_scale_factor: float = 1.0,
        rngs: nnx.Rngs,
        dtype=None,
    ):
        out_channels = out_channels or in_channels
        self.output_scale_factor = output_scale_factor
        self.norm1 = group_norm(in_channels, eps=eps, groups=groups, rngs=rngs, dtype=dtype)
        self.conv1 = conv(in_channels, out_channels, 3, padding=1, rngs=rngs, dtype=dtype)
        self.time_emb_proj = (
            linear(temb_channels, out_channels, rngs=rngs, dtype=dtype) if temb_channels is not None else None
        )
        self.norm2 = group_norm(out_channels, eps=eps, groups=groups, rngs=rngs, dtype=dtype)
        self.conv2 = conv(out_channels, out_channels, 3, padding=1, rngs=rngs, dtype=dtype)
        self.conv_shortcut = (
            conv(in_channels, out_channels, 1, rngs=rngs, dtype=dtype) if in_channels != out_channels else None
        )

    def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        """x: (N, H, W, C); temb: (N, D) or None."""
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(jax.nn.silu(temb))[:, None, None, :]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return (x + h) / self.output_scale_factor


class TemporalResnetBlock(nnx.Module):
    """diffusers `TemporalResnetBlock`: residual block of (3, 1, 1) convolutions over frames."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        temb_channels: int | None = None,
        eps: float = 1e-6,
        groups: int = 32,
        rngs: nnx.Rngs,
        dtype=None,
    ):
        out_channels = out_channels or in_channels
        k, p = (3, 1, 1), (1, 0, 0)
        self.norm1 = group_norm(in_channels, eps=eps, groups=groups, rngs=rngs, dtype=dtype)
        self.conv1 = conv(in_channels, out_channels, k, padding=p, ndim=3, rngs=rngs, dtype=dtype)
        self.time_emb_proj = (
            linear(temb_channels, out_channels, rngs=rngs, dtype=dtype) if temb_channels is not None else None
        )
        self.norm2 = group_norm(out_channels, eps=eps, groups=groups, rngs=rngs, dtype=dtype)
        self.conv2 = conv(out_channels, out_channels, k, padding=p, ndim=3, rngs=rngs, dtype=dtype)
        self.conv_shortcut = (
            conv(in_channels, out_channels, 1, ndim=3, rngs=rngs, dtype=dtype) if in_channels != out_channels else None
        )

    def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        """x: (B, F, H, W, C); temb: (B, F, D) or None."""
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(jax.nn.silu(temb))[:, :, None, None, :]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class AlphaBlender(nnx.Module):
    """diffusers `AlphaBlender`: alpha * spatial + (1 - alpha) * temporal.

    Strategies: "learned" (alpha = sigmoid(mix_factor)) and "learned_with_images" (as
    "learned", but alpha = 1 on frames flagged by `image_only_indicator`).
    """

    def __init__(
        self,
        alpha: float,
        merge_strategy: str = "learned_with_images",
        switch_spatial_to_temporal_mix: bool = False,
        *,
        dtype=jnp.float32,
    ):
        if merge_strategy not in ("learned", "learned_with_images"):
            raise ValueError(
                f"AlphaBlender merge_strategy {merge_strategy!r} is not supported; use 'learned' or 'learned_with_images'"
            )
        self.merge_strategy = merge_strategy
        self.switch_spatial_to_temporal_mix = switch_spatial_to_temporal_mix
        self.mix_factor = nnx.Param(jnp.full((1,), alpha, dtype=dtype))

    def alpha(self, image_only_indicator: jax.Array | None, batch_frames: tuple[int, int]) -> jax.Array:
        """Alpha per (batch, frame): shape (B, F)."""
        a = jax.nn.sigmoid(self.mix_factor.value[0].astype(jnp.float32))
        a = jnp.broadcast_to(a, batch_frames)
        if self.merge_strategy == "learned_with_images":
            if image_only_indicator is None:
                raise ValueError("AlphaBlender 'learned_with_images' needs image_only_indicator of shape (B, F)")
            a = jnp.where(image_only_indicator.astype(bool), 1.0, a)
        if self.switch_spatial_to_temporal_mix:
            a = 1.0 - a
        return a

    def __call__(
        self, x_spatial: jax.Array, x_temporal: jax.Array, image_only_indicator: jax.Array | None, num_frames: int
    ) -> jax.Array:
        """Blend (B, F, H, W, C) tensors, or tensors whose leading axis is B*F."""
        if x_spatial.ndim == 5:  # (B, F, H, W, C)
            b = x_spatial.shape[0]
            a = self.alpha(image_only_indicator, (b, num_frames)).reshape(b, num_frames, 1, 1, 1)
        else:  # (B*F, ...)
            b = x_spatial.shape[0] // num_frames
            a = self.alpha(image_only_indicator, (b, num_frames)).reshape(-1, *([1] * (x_spatial.ndim - 1)))
        a = a.astype(x_spatial.dtype)
        return a * x_spatial + (1.0 - a) * x_temporal


class SpatioTemporalResBlock(nnx.Module):
    """diffusers `SpatioTemporalResBlock`: 2D resnet per frame, temporal resnet, blended."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        temb_channels: int | None = None,
        eps: float = 1e-6,
        temporal_eps: float | None = None,
        merge_factor: float = 0.5,
        merge_strategy: str = "learned_with_images",
        switch_spatial_to_temporal_mix: bool = False,
        groups: int = 32,
        rngs: nnx.Rngs,
        dtype=None,
    ):
        out_channels = out_channels or in_channels
        self.spatial_res_block = ResnetBlock2D(
            in_channels, out_channels, temb_channels=temb_channels, eps=eps, groups=groups, rngs=rngs, dtype=dtype
        )
        self.temporal_res_block = TemporalResnetBlock(
            out_channels,
            out_channels,
            temb_channels=temb_channels,
            eps=temporal_eps if temporal_eps is not None else eps,
            groups=groups,
            rngs=rngs,
            dtype=dtype,
        )
        self.time_mixer = AlphaBlender(merge_factor, merge_strategy, switch_spatial_to_temporal_mix)

    def __call__(
        self,
        x: jax.Array,
        temb: jax.Array | None,
        image_only_indicator: jax.Array | None,
        num_frames: int,
    ) -> jax.Array:
        """x: (B*F, H, W, C); temb: (B*F, D) or None -> (B*F, H, W, C')."""
        h = self.spatial_res_block(x, temb)
        bf, hh, ww, c = h.shape
        b = bf // num_frames
        h5 = h.reshape(b, num_frames, hh, ww, c)
        temb5 = temb.reshape(b, num_frames, -1) if temb is not None else None
        t = self.temporal_res_block(h5, temb5)
        out = self.time_mixer(h5, t, image_only_indicator, num_frames)
        return out.reshape(bf, hh, ww, c)


class Downsample2D(nnx.Module):
    """diffusers `Downsample2D` with a conv: stride 2, padding 1 (UNet) or 0 with (0,1,0,1) pre-pad (VAE)."""

    def __init__(self, channels: int, out_channels: int | None = None, *, padding: int = 1, rngs: nnx.Rngs, dtype=None):
        self.padding = padding
        self.conv = conv(channels, out_channels or channels, 3, stride=2, padding=padding, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (N, H, W, C) -> (N, H/2, W/2, C')."""
        if self.padding == 0:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return self.conv(x)


class Upsample2D(nnx.Module):
    """diffusers `Upsample2D` with a conv: nearest 2x, then 3x3 conv."""

    def __init__(self, channels: int, out_channels: int | None = None, *, rngs: nnx.Rngs, dtype=None):
        self.conv = conv(channels, out_channels or channels, 3, padding=1, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, output_size: tuple[int, int] | None = None) -> jax.Array:
        """x: (N, H, W, C) -> (N, 2H, 2W, C') (or `output_size`, nearest)."""
        n, h, w, c = x.shape
        if output_size is None:
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        else:
            rows = (jnp.arange(output_size[0]) * h // output_size[0]).astype(jnp.int32)
            cols = (jnp.arange(output_size[1]) * w // output_size[1]).astype(jnp.int32)
            x = x[:, rows][:, :, cols]
        return self.conv(x)
