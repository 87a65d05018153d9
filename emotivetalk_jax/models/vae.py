"""Stable Video Diffusion's VAE (diffusers `AutoencoderKLTemporalDecoder`), channels-last.

Encoder: the 2D Stable Diffusion encoder + `quant_conv`, applied frame by frame.
Decoder: `TemporalDecoder` (spatio-temporal res blocks, ends in `conv_out` then the
(3, 1, 1) `time_conv_out` over frames); there is no `post_quant_conv`.

Shape legend: N images (= B*F frames of B videos with F frames each), H, W image size,
h, w latent size (H / 2^(levels - 1)), C channels, L latent channels (4).
NNX attribute paths equal diffusers' state-dict paths (see `convert/svd.py`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.models.layers import Attention, cast_params, conv, group_norm, trace_safe_rngs
from emotivetalk_jax.models.resnet import Downsample2D, ResnetBlock2D, SpatioTemporalResBlock, Upsample2D

# diffusers `AutoencoderKLTemporalDecoder.__init__` defaults.
DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",),
    "block_out_channels": (64,),
    "layers_per_block": 1,
    "latent_channels": 4,
    "sample_size": 32,
    "scaling_factor": 0.18215,
    "force_upcast": True,
    # Not in `AutoencoderKLTemporalDecoder`'s signature (SVD fixes 32); diffusers' `AutoencoderKL`
    # names it so. Small VAEs (the `demo` variant) need fewer groups than channels: with one
    # channel per group, GroupNorm is an instance norm that discards flat colours.
    "norm_num_groups": 32,
}


class VAEAttention(Attention):
    """The VAE's spatial self-attention: GroupNorm, one head per `dim_head` channels, residual.

    diffusers `Attention(query_dim=C, heads=C // dim_head, dim_head, norm_num_groups=32,
    bias=True, residual_connection=True)` on (N, C, H, W); here (N, H, W, C).
    """

    def __init__(self, channels: int, *, dim_head: int, eps: float = 1e-6, groups: int = 32, rngs: nnx.Rngs,
                 dtype=None):
        heads = channels // dim_head
        if heads < 1:
            raise ValueError(f"attention_head_dim {dim_head} exceeds the channel count {channels}")
        super().__init__(channels, heads=heads, dim_head=dim_head, bias=True, rngs=rngs, dtype=dtype)
        self.group_norm = group_norm(channels, eps=eps, groups=groups, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:  # type: ignore[override]
        """x: (N, H, W, C) -> (N, H, W, C)."""
        n, h, w, c = x.shape
        tokens = self.group_norm(x).reshape(n, h * w, c)
        return x + super().__call__(tokens).reshape(n, h, w, c)


class DownEncoderBlock2D(nnx.Module):
    """diffusers `DownEncoderBlock2D`: resnets, then a stride-2 conv with (0, 1, 0, 1) pre-padding."""

    def __init__(self, cin: int, cout: int, *, num_layers: int, add_downsample: bool, groups: int = 32,
                 rngs: nnx.Rngs, dtype=None):
        self.resnets = nnx.List(
            [
                ResnetBlock2D(cin if i == 0 else cout, cout, eps=1e-6, groups=groups, rngs=rngs, dtype=dtype)
                for i in range(num_layers)
            ]
        )
        self.downsamplers = (
            nnx.List([Downsample2D(cout, cout, padding=0, rngs=rngs, dtype=dtype)]) if add_downsample else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (N, H, W, Cin) -> (N, H', W', Cout), H' = H / 2 when downsampling."""
        for resnet in self.resnets:
            x = resnet(x)
        for down in self.downsamplers or ():
            x = down(x)
        return x


class UNetMidBlock2D(nnx.Module):
    """diffusers `UNetMidBlock2D` as the VAE encoder builds it: resnet, attention, resnet."""

    def __init__(self, channels: int, *, groups: int = 32, rngs: nnx.Rngs, dtype=None):
        kw = dict(eps=1e-6, groups=groups, rngs=rngs, dtype=dtype)
        self.attentions = nnx.List([VAEAttention(channels, dim_head=channels, groups=groups, rngs=rngs, dtype=dtype)])
        self.resnets = nnx.List([ResnetBlock2D(channels, channels, **kw), ResnetBlock2D(channels, channels, **kw)])

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (N, h, w, C) -> (N, h, w, C)."""
        x = self.resnets[0](x)
        for attn, resnet in zip(self.attentions, list(self.resnets)[1:]):
            x = resnet(attn(x))
        return x


class Encoder(nnx.Module):
    """diffusers `vae.Encoder` (double_z): (N, H, W, Cin) -> (N, h, w, 2L) moments."""

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        block_out_channels: tuple[int, ...],
        layers_per_block: int,
        *,
        groups: int = 32,
        rngs: nnx.Rngs,
        dtype=None,
    ):
        chans = block_out_channels
        self.conv_in = conv(in_channels, chans[0], 3, padding=1, rngs=rngs, dtype=dtype)
        self.down_blocks = nnx.List(
            [
                DownEncoderBlock2D(
                    chans[max(i - 1, 0)],
                    c,
                    num_layers=layers_per_block,
                    add_downsample=i < len(chans) - 1,
                    groups=groups,
                    rngs=rngs,
                    dtype=dtype,
                )
                for i, c in enumerate(chans)
            ]
        )
        self.mid_block = UNetMidBlock2D(chans[-1], groups=groups, rngs=rngs, dtype=dtype)
        self.conv_norm_out = group_norm(chans[-1], eps=1e-6, groups=groups, rngs=rngs, dtype=dtype)
        self.conv_out = conv(chans[-1], 2 * latent_channels, 3, padding=1, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


def _st_block(cin: int, cout: int, groups: int, rngs: nnx.Rngs, dtype) -> SpatioTemporalResBlock:
    # As MidBlockTemporalDecoder / UpBlockTemporalDecoder build them.
    return SpatioTemporalResBlock(
        cin,
        cout,
        temb_channels=None,
        eps=1e-6,
        temporal_eps=1e-5,
        merge_factor=0.0,
        merge_strategy="learned",
        switch_spatial_to_temporal_mix=True,
        groups=groups,
        rngs=rngs,
        dtype=dtype,
    )


class MidBlockTemporalDecoder(nnx.Module):
    """diffusers `MidBlockTemporalDecoder`: resnets[0], then (attention, resnet) pairs.

    diffusers builds `num_layers` resnets but ONE attention and zips them, so resnets
    past index 1 hold parameters that the forward never uses; reproduced as is.
    """

    def __init__(self, channels: int, *, num_layers: int, attention_head_dim: int, groups: int = 32,
                 rngs: nnx.Rngs, dtype=None):
        self.resnets = nnx.List([_st_block(channels, channels, groups, rngs, dtype) for _ in range(num_layers)])
        self.attentions = nnx.List(
            [VAEAttention(channels, dim_head=attention_head_dim, groups=groups, rngs=rngs, dtype=dtype)]
        )

    def __call__(self, x: jax.Array, image_only_indicator: jax.Array, num_frames: int) -> jax.Array:
        """x: (B*F, h, w, C); image_only_indicator: (B, F)."""
        x = self.resnets[0](x, None, image_only_indicator, num_frames)
        for resnet, attn in zip(list(self.resnets)[1:], self.attentions):
            x = resnet(attn(x), None, image_only_indicator, num_frames)
        return x


class UpBlockTemporalDecoder(nnx.Module):
    """diffusers `UpBlockTemporalDecoder`: spatio-temporal resnets, then nearest 2x + conv."""

    def __init__(self, cin: int, cout: int, *, num_layers: int, add_upsample: bool, groups: int = 32,
                 rngs: nnx.Rngs, dtype=None):
        self.resnets = nnx.List(
            [_st_block(cin if i == 0 else cout, cout, groups, rngs, dtype) for i in range(num_layers)]
        )
        self.upsamplers = nnx.List([Upsample2D(cout, cout, rngs=rngs, dtype=dtype)]) if add_upsample else None

    def __call__(self, x: jax.Array, image_only_indicator: jax.Array, num_frames: int) -> jax.Array:
        """x: (B*F, h, w, Cin) -> (B*F, 2h, 2w, Cout) (no 2x on the last block)."""
        for resnet in self.resnets:
            x = resnet(x, None, image_only_indicator, num_frames)
        for up in self.upsamplers or ():
            x = up(x)
        return x


class TemporalDecoder(nnx.Module):
    """diffusers `TemporalDecoder`: (B*F, h, w, L) latents -> (B*F, H, W, Cout) frames."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        block_out_channels: tuple[int, ...],
        layers_per_block: int,
        *,
        groups: int = 32,
        rngs: nnx.Rngs,
        dtype=None,
    ):
        rev = tuple(reversed(block_out_channels))
        self.conv_in = conv(in_channels, rev[0], 3, padding=1, rngs=rngs, dtype=dtype)
        self.mid_block = MidBlockTemporalDecoder(
            rev[0], num_layers=layers_per_block, attention_head_dim=rev[0], groups=groups, rngs=rngs, dtype=dtype
        )
        self.up_blocks = nnx.List(
            [
                UpBlockTemporalDecoder(
                    rev[max(i - 1, 0)],
                    c,
                    num_layers=layers_per_block + 1,
                    add_upsample=i < len(rev) - 1,
                    groups=groups,
                    rngs=rngs,
                    dtype=dtype,
                )
                for i, c in enumerate(rev)
            ]
        )
        self.conv_norm_out = group_norm(block_out_channels[0], eps=1e-6, groups=groups, rngs=rngs, dtype=dtype)
        self.conv_out = conv(block_out_channels[0], out_channels, 3, padding=1, rngs=rngs, dtype=dtype)
        self.time_conv_out = conv(out_channels, out_channels, (3, 1, 1), padding=(1, 0, 0), ndim=3, rngs=rngs, dtype=dtype)

    def __call__(self, z: jax.Array, image_only_indicator: jax.Array, num_frames: int) -> jax.Array:
        x = self.conv_in(z)
        x = self.mid_block(x, image_only_indicator, num_frames)
        for block in self.up_blocks:
            x = block(x, image_only_indicator, num_frames)
        x = self.conv_out(jax.nn.silu(self.conv_norm_out(x)))
        bf, hh, ww, c = x.shape
        x = self.time_conv_out(x.reshape(bf // num_frames, num_frames, hh, ww, c))  # conv over frames
        return x.reshape(bf, hh, ww, c)


def sample_latent(mean: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
    """A draw from the posterior N(mean, exp(logvar)) (diffusers `latent_dist.sample()`)."""
    noise = jax.random.normal(key, mean.shape, jnp.float32).astype(mean.dtype)
    return mean + jnp.exp(0.5 * logvar) * noise


def resolve_config(cfg: dict) -> dict[str, Any]:
    """A diffusers `AutoencoderKLTemporalDecoder` config with defaults filled in and checked.

    Keys starting with `_` are ignored; unknown keys and unsupported values raise ValueError.
    """
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    unknown = sorted(set(cfg) - set(DIFFUSERS_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown AutoencoderKLTemporalDecoder config keys {unknown}; known: {sorted(DIFFUSERS_DEFAULTS)}")
    out = {**DIFFUSERS_DEFAULTS, **cfg}
    out["down_block_types"] = tuple(out["down_block_types"])
    out["block_out_channels"] = tuple(int(c) for c in out["block_out_channels"])
    bad = [t for t in out["down_block_types"] if t != "DownEncoderBlock2D"]
    if bad:
        raise ValueError(f"down_block_types {bad} are not supported; the SVD VAE uses only 'DownEncoderBlock2D'")
    chans = out["block_out_channels"]
    if len(out["down_block_types"]) != len(chans) or not chans:
        raise ValueError(
            f"down_block_types ({len(out['down_block_types'])}) and block_out_channels ({len(chans)}) "
            "must have the same non-zero length"
        )
    groups = out["norm_num_groups"] = int(out["norm_num_groups"])
    if groups < 1 or any(c % groups for c in chans):
        raise ValueError(f"block_out_channels {chans} must all divide by norm_num_groups={groups} (GroupNorm groups)")
    for k in ("in_channels", "out_channels", "latent_channels", "layers_per_block"):
        if int(out[k]) < 1:
            raise ValueError(f"{k} must be a positive integer, got {out[k]!r}")
        out[k] = int(out[k])
    return out


class AutoencoderKLTemporalDecoder(nnx.Module):
    """SVD's VAE: `encode` images to latent moments, `decode` latent videos to frames.

    encode: (N, H, W, Cin) in [-1, 1] -> mean, logvar (N, h, w, L), unscaled (multiply by
    `config["scaling_factor"]` for the diffusion model, as diffusers pipelines do).
    decode: (B*F, h, w, L) with F = num_frames -> (B*F, H, W, Cout).
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        rngs: nnx.Rngs,
        dtype=None,
    ):
        chans, kw = tuple(block_out_channels), dict(groups=norm_num_groups, rngs=rngs, dtype=dtype)
        self.encoder = Encoder(in_channels, latent_channels, chans, layers_per_block, **kw)
        self.decoder = TemporalDecoder(latent_channels, out_channels, chans, layers_per_block, **kw)
        self.quant_conv = conv(2 * latent_channels, 2 * latent_channels, 1, rngs=rngs, dtype=dtype)
        self.config: dict[str, Any] = {}

    @classmethod
    def from_diffusers_config(
        cls, cfg: dict, *, rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32
    ) -> AutoencoderKLTemporalDecoder:
        """Build from a diffusers `config.json` dict (random init); `self.config` keeps it resolved."""
        c = resolve_config(cfg)
        model = cls(
            in_channels=c["in_channels"],
            out_channels=c["out_channels"],
            block_out_channels=c["block_out_channels"],
            layers_per_block=c["layers_per_block"],
            latent_channels=c["latent_channels"],
            norm_num_groups=c["norm_num_groups"],
            rngs=trace_safe_rngs(rngs),
            dtype=dtype,
        )
        model.config = c
        return cast_params(model, param_dtype)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x: (N, H, W, Cin) -> (mean, logvar), each (N, h, w, L); logvar clipped to [-30, 20]."""
        moments = self.quant_conv(self.encoder(x))
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z: jax.Array, num_frames: int) -> jax.Array:
        """z: (B*F, h, w, L), F = num_frames -> (B*F, H, W, Cout)."""
        if z.shape[0] % num_frames:
            raise ValueError(f"leading axis {z.shape[0]} is not a multiple of num_frames={num_frames}")
        image_only_indicator = jnp.zeros((z.shape[0] // num_frames, num_frames), z.dtype)
        return self.decoder(z, image_only_indicator, num_frames)

    def __call__(self, x: jax.Array, num_frames: int = 1, *, key: jax.Array | None = None) -> jax.Array:
        """diffusers forward: encode, take the posterior mode (or a sample with `key`), decode."""
        mean, logvar = self.encode(x)
        z = mean if key is None else sample_latent(mean, logvar, key)
        return self.decode(z, num_frames)
