"""FVD's I3D (Inception-v1 inflated to 3D, Kinetics-400), channels-last.

Shape legend: B videos, T frames, H, W spatial, C channels.

pytorch-i3d's `InceptionI3d` (github.com/piergiaj/pytorch-i3d, pytorch_i3d.py; the copy in
VideoGPT's videogpt/fvd/pytorch_i3d.py, whose `i3d_pretrained_400.pt` FVD code loads):
TensorFlow "SAME" padding computed from the input size, batch norm eps 1e-3, logits
averaged over time. Attribute paths equal that state dict's keys (`Conv3d_1a_7x7.conv3d.
weight`, `Mixed_3b.b1b.bn.running_var`, `logits.conv3d.bias`).

The smallest input the network accepts is `MIN_FRAMES` = 9 frames (the final 2 x 7 x 7
average pool needs ceil(T / 8) >= 2); FVD's preprocessing is `eval.i3d.preprocess`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.models.metrics.layers import FrozenBatchNorm, conv, max_pool, same_pad

SIZE = 224
MIN_FRAMES = 9
FEATURES = 400


class Unit3D(nnx.Module):
    """Conv3d with TF "SAME" padding (+ batch norm eps 1e-3) (+ ReLU)."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), *, rngs: nnx.Rngs,
                 batch_norm: bool = True, bias: bool = False, activation: bool = True):
        self.kernel, self.stride, self.activation = tuple(kernel), tuple(stride), activation
        self.conv3d = conv(cin, cout, kernel, stride=stride, bias=bias, ndim=3, rngs=rngs)
        self.bn = FrozenBatchNorm(cout, eps=1e-3) if batch_norm else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv3d(same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return jax.nn.relu(x) if self.activation else x


def _pool(x: jax.Array, window, stride) -> jax.Array:
    # pytorch-i3d's MaxPool3dSamePadding pads with zeros (inputs are post-ReLU, >= 0).
    return max_pool(same_pad(x, window, stride), window, stride)


class InceptionModule(nnx.Module):
    def __init__(self, cin: int, c: tuple[int, ...], *, rngs: nnx.Rngs):
        self.b0 = Unit3D(cin, c[0], rngs=rngs)
        self.b1a = Unit3D(cin, c[1], rngs=rngs)
        self.b1b = Unit3D(c[1], c[2], (3, 3, 3), rngs=rngs)
        self.b2a = Unit3D(cin, c[3], rngs=rngs)
        self.b2b = Unit3D(c[3], c[4], (3, 3, 3), rngs=rngs)
        self.b3b = Unit3D(cin, c[5], rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.b3b(_pool(x, (3, 3, 3), (1, 1, 1)))
        return jnp.concatenate([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), b3], -1)


_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}
# (endpoint, pool window, pool stride) in the order the network runs them.
_POOLS = {"Mixed_3b": ((1, 3, 3), (1, 2, 2)), "Mixed_4b": ((3, 3, 3), (2, 2, 2)), "Mixed_5b": ((2, 2, 2), (2, 2, 2))}


class InceptionI3d(nnx.Module):
    """pytorch-i3d `InceptionI3d(num_classes)` in eval mode: video -> time-averaged logits."""

    def __init__(self, num_classes: int = FEATURES, *, rngs: nnx.Rngs):
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2), rngs=rngs)
        self.Conv3d_2b_1x1 = Unit3D(64, 64, rngs=rngs)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), rngs=rngs)
        for name, (cin, c) in _MIXED.items():
            setattr(self, name, InceptionModule(cin, c, rngs=rngs))
        self.logits = Unit3D(1024, num_classes, rngs=rngs, batch_norm=False, bias=True, activation=False)

    def __call__(self, video: jax.Array) -> jax.Array:
        """video (B, T, 224, 224, 3) in [-1, 1], T >= 9 -> logits (B, num_classes)."""
        x = self.Conv3d_1a_7x7(video)
        x = _pool(x, (1, 3, 3), (1, 2, 2))
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
        for name in _MIXED:
            if name in _POOLS:
                x = _pool(x, *_POOLS[name])
            x = getattr(self, name)(x)
        # AvgPool3d([2, 7, 7], stride 1), dropout (identity in eval), 1x1x1 logits, squeeze, mean over time.
        x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 7, 7, 1), (1,) * 5, "VALID") / 98.0
        return self.logits(x).mean(axis=(1, 2, 3))

