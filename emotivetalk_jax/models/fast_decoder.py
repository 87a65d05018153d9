"""A small frame-wise decoder distilled from a bundle's VAE decoder (TAESD-like; issue 29).

Shape legend: N frames, h, w latent size, L latent channels (4), H = w x 2^(levels - 1)
image size, C channels of a level.

The bundle's temporal VAE decoder (mid-block attention, GroupNorm spatio-temporal res blocks)
costs 1.35 GFLOP per 64 px frame of the demo; this one is plain 3x3 convolutions and ReLUs, one
residual pair per level, nearest-neighbour upsampling between levels (about 0.19 GFLOP per
frame at the default widths 64 / 32 / 16). It decodes each frame alone (no temporal layers) and
is trained to reproduce the full decoder's output on the same latents (`train/fast_decoder.py`).

With `reference` on, it also reads the portrait the video animates (x_ref, R x R pixels, and its
VAE latent z_ref): the first convolution sees z and z - z_ref, each level adds a 1x1 projection of
the portrait's pixels folded to that level's size (space-to-depth; computed once per call, not per
frame), and the output is x_ref plus what the network draws (its last convolution starts at zero,
so an untrained one returns the portrait). Most of a talking-head frame is the portrait, so the
network's few channels go to what moves; at about the same cost per frame it follows the full
decoder several dB closer (benchmarks/README.md, "A fast decoder").
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from emotivetalk_jax.models.layers import conv


@dataclasses.dataclass(frozen=True)
class FastDecoderConfig:
    latent_channels: int = 4
    out_channels: int = 3
    widths: tuple[int, ...] = (64, 32, 16)  # per level, coarsest first; len = the VAE's levels
    reference: bool = False  # reads the portrait (x_ref, z_ref) and draws on top of it (module docstring)

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
    """Unscaled VAE latents (N, h, w, L) -> frames (N, H, W, 3) in about [-1, 1], each frame alone.

    With `cfg.reference`: also the portrait x_ref (1 or N, H, W, 3) in [-1, 1] and its unscaled
    latent z_ref (1 or N, h, w, L), the VAE encoder's mean of x_ref (without: both unread)."""

    def __init__(self, cfg: FastDecoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        w = cfg.widths
        latent_in = cfg.latent_channels * (2 if cfg.reference else 1)
        self.conv_in = conv(latent_in, w[0], 3, padding=1, rngs=rngs)
        self.blocks = nnx.List([FastResBlock(c, rngs=rngs) for c in w])
        self.ups = nnx.List([FastUp(a, b, rngs=rngs) for a, b in zip(w[:-1], w[1:])])
        self.conv_out = conv(w[-1], cfg.out_channels, 3, padding=1, rngs=rngs)
        if cfg.reference:
            folds = [2 ** (len(w) - 1 - i) for i in range(len(w))]
            self.ref_proj = nnx.List([conv(cfg.out_channels * f * f, c, 1, rngs=rngs) for f, c in zip(folds, w)])
            self.conv_out.kernel[...] = jnp.zeros_like(self.conv_out.kernel[...])

    def reference_features(self, x_ref: jax.Array) -> list[jax.Array]:
        """x_ref (B, H, W, 3) -> per level (B, H / f, W / f, C): its pixels folded f x f, projected."""
        out = []
        for i, proj in enumerate(self.ref_proj):
            f = 2 ** (len(self.ref_proj) - 1 - i)
            out.append(proj(rearrange(x_ref, "b (h p) (w q) c -> b h w (p q c)", p=f, q=f)))
        return out

    def __call__(self, z: jax.Array, x_ref: jax.Array | None = None, z_ref: jax.Array | None = None) -> jax.Array:
        feats = None
        if self.cfg.reference:
            if x_ref is None or z_ref is None:
                raise ValueError("this fast decoder reads the portrait: pass x_ref and z_ref")
            feats = self.reference_features(x_ref)
            z = jnp.concatenate([z, z - jnp.broadcast_to(z_ref, z.shape)], -1)
        x = self.conv_in(z)
        x = jax.nn.relu(x if feats is None else x + feats[0])
        for i, block in enumerate(self.blocks):
            x = block(x + feats[i] if feats is not None and i else x)
            if i < len(self.ups):
                x = self.ups[i](x)
        out = self.conv_out(x)
        return out if feats is None else out + x_ref


def conv_flops(cfg: FastDecoderConfig, latent_size: int) -> int:
    """Multiply-add FLOPs (2 per MAC) of one frame from an (latent_size, latent_size) latent (with
    `reference`, not counting the portrait's features: computed once per call, not per frame)."""
    w, total, side = cfg.widths, 0, latent_size
    mac = lambda cin, cout, s: 9 * cin * cout * s * s
    total += mac(cfg.latent_channels * (2 if cfg.reference else 1), w[0], side)
    for i, c in enumerate(w):
        total += 2 * mac(c, c, side)
        if i + 1 < len(w):
            side *= 2
            total += mac(c, w[i + 1], side)
    total += mac(w[-1], cfg.out_channels, side)
    return 2 * total


__all__ = ["FastDecoder", "FastDecoderConfig", "conv_flops"]
