"""A small frame-wise decoder distilled from a bundle's VAE decoder (TAESD-like; issue 29).

Shape legend: N frames, h, w latent size, L latent channels (4), H = w x 2^(levels - 1)
image size, C channels of a level.

The bundle's temporal VAE decoder (mid-block attention, GroupNorm spatio-temporal res blocks)
costs 1.35 GFLOP per 64 px frame of the demo; this one is plain 3x3 convolutions and ReLUs, one
residual pair per level, nearest-neighbour upsampling between levels (about 0.19 GFLOP per
frame at the default widths 64 / 32 / 16). It decodes each frame alone (no temporal layers) and
is trained to reproduce the full decoder's output on the same latents (`train/fast_decoder.py`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.models.layers import conv


@dataclasses.dataclass(frozen=True)
class FastDecoderConfig:
    latent_channels: int = 4
    out_channels: int = 3
    widths: tuple[int, ...] = (64, 32, 16)  # per level, coarsest first; len = the VAE's levels

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(c) for c in self.widths))
        if not self.widths or min(self.widths) < 1 or self.latent_channels < 1 or self.out_channels < 1:
            raise ValueError(f"bad fast decoder config: widths {self.widths}, latent_channels "
                             f"{self.latent_channels}, out_channels {self.out_channels}")

    @property
    def factor(self) -> int:
        """Pixels per latent cell."""
        return 2 ** (len(self.widths) - 1)


class FastResBlock(nnx.Module):
    """x + conv2(relu(conv1(x))), then ReLU; (N, H, W, C) -> (N, H, W, C)."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.conv1 = conv(channels, channels, 3, padding=1, rngs=rngs)
        self.conv2 = conv(channels, channels, 3, padding=1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(x + self.conv2(jax.nn.relu(self.conv1(x))))


class FastUp(nnx.Module):
    """Nearest-neighbour x2, then a 3x3 conv to the next level's width; (N, H, W, C) -> (N, 2H, 2W, C')."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        self.conv = conv(cin, cout, 3, padding=1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return jax.nn.relu(self.conv(x))


class FastDecoder(nnx.Module):
    """Unscaled VAE latents (N, h, w, L) -> frames (N, H, W, 3) in about [-1, 1], each frame alone."""

    def __init__(self, cfg: FastDecoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        w = cfg.widths
        self.conv_in = conv(cfg.latent_channels, w[0], 3, padding=1, rngs=rngs)
        self.blocks = nnx.List([FastResBlock(c, rngs=rngs) for c in w])
        self.ups = nnx.List([FastUp(a, b, rngs=rngs) for a, b in zip(w[:-1], w[1:])])
        self.conv_out = conv(w[-1], cfg.out_channels, 3, padding=1, rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.conv_in(z))
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.ups):
                x = self.ups[i](x)
        return self.conv_out(x)


def conv_flops(cfg: FastDecoderConfig, latent_size: int) -> int:
    """Multiply-add FLOPs (2 per MAC) of one frame from an (latent_size, latent_size) latent."""
    w, total, side = cfg.widths, 0, latent_size
    mac = lambda cin, cout, s: 9 * cin * cout * s * s
    total += mac(cfg.latent_channels, w[0], side)
    for i, c in enumerate(w):
        total += 2 * mac(c, c, side)
        if i + 1 < len(w):
            side *= 2
            total += mac(c, w[i + 1], side)
    total += mac(w[-1], cfg.out_channels, side)
    return 2 * total


__all__ = ["FastDecoder", "FastDecoderConfig", "conv_flops"]
