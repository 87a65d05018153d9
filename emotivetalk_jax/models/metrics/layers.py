"""Layers of the frozen metric networks (InceptionV3, I3D, SyncNet, ResNet-50), channels-last.

Shape legend: B batch, T frames, H, W spatial, C channels.
The metric networks only ever run in inference, so batch norm is `FrozenBatchNorm`: its
running statistics are parameters (`mean`, `var`) that the strict converter fills like
any other, and nothing in these modules changes during a forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


class FrozenBatchNorm(nnx.Module):
    """torch.nn.BatchNorm{1,2,3}d in eval mode over the last axis: (x - mean) / sqrt(var + eps) * scale + bias."""

    def __init__(self, channels: int, *, eps: float = 1e-5):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.mean = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.var = nnx.Param(jnp.ones((channels,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        inv = self.scale.value * jax.lax.rsqrt(self.var.value + self.eps)
        return x * inv + (self.bias.value - self.mean.value * inv)


def _tuple(v: int | Sequence[int], n: int) -> tuple[int, ...]:
    return (v,) * n if isinstance(v, int) else tuple(v)


def conv(cin: int, cout: int, kernel: int | Sequence[int], *, rngs: nnx.Rngs, stride: int | Sequence[int] = 1,
         padding: int | Sequence[int] | str = 0, bias: bool = False, ndim: int = 2) -> nnx.Conv:
    """torch.nn.Conv{2,3}d (symmetric integer padding, or "SAME" as TensorFlow pads), channels-last."""
    pad = padding if isinstance(padding, str) else tuple((p, p) for p in _tuple(padding, ndim))
    return nnx.Conv(cin, cout, _tuple(kernel, ndim), strides=_tuple(stride, ndim), padding=pad, use_bias=bias,
                    rngs=rngs)


def max_pool(x: jax.Array, window: Sequence[int], stride: Sequence[int], padding: Sequence[int] | None = None) -> jax.Array:
    """torch max pooling (floor mode, -inf padding) over the spatial axes of (B, *spatial, C)."""
    pad = ((0, 0),) + tuple((p, p) for p in (padding or (0,) * len(window))) + ((0, 0),)
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *stride, 1), pad)


def avg_pool(x: jax.Array, window: Sequence[int], stride: Sequence[int], padding: Sequence[int] | None = None,
             *, count_include_pad: bool = True) -> jax.Array:
    """torch average pooling over the spatial axes of (B, *spatial, C)."""
    pad = ((0, 0),) + tuple((p, p) for p in (padding or (0,) * len(window))) + ((0, 0),)
    dims, strides = (1, *window, 1), (1, *stride, 1)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, pad)
    if count_include_pad or not any(p for p in (padding or ())):
        size = 1
        for w in window:
            size *= w
        return total / size
    ones = jnp.ones((1, *x.shape[1:-1], 1), x.dtype)
    return total / jax.lax.reduce_window(ones, 0.0, jax.lax.add, dims, strides, pad)


def same_pad(x: jax.Array, window: Sequence[int], stride: Sequence[int]) -> jax.Array:
    """Zero-pad the spatial axes of (B, *spatial, C) the way TensorFlow's "SAME" does
    (pytorch-i3d's `compute_pad`: total k - s, or k - (n mod s); the extra cell at the end)."""
    pads = [(0, 0)]
    for n, k, s in zip(x.shape[1:-1], window, stride):
        total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
        pads.append((total // 2, total - total // 2))
    return jnp.pad(x, pads + [(0, 0)])


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """torch `F.interpolate(mode="bilinear", align_corners=False)` (no antialiasing) of (B, H, W, C)."""
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), method="linear", antialias=False)
