"""E-FID's expression regressor: Deep3DFaceRecon's ResNet-50 (`ReconNetWrapper`), channels-last.

Shape legend: B faces, H, W spatial (224), C channels.

Deep3DFaceRecon_pytorch (github.com/sicxu/Deep3DFaceRecon_pytorch, models/networks.py):
a torchvision ResNet-50 (v1.5: stride in the 3x3 conv) without its fc, then seven 1x1
convolutions on the pooled 2048-d feature giving the 257 coefficients of the Basel face
model: identity 80, expression 64, texture 80, angles 3, lighting 27, translation 3.
Attribute paths equal the keys of the checkpoint's `net_recon` state dict
(`backbone.layer1.0.conv1.weight`, `backbone.layer1.0.downsample.1.running_mean`,
`final_layers.1.bias`). Input: aligned face crops, RGB in [0, 1], 224 x 224.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.models.metrics.layers import FrozenBatchNorm, conv, max_pool

SIZE = 224
COEFFS = (("id", 80), ("exp", 64), ("tex", 80), ("angle", 3), ("gamma", 27), ("trans_xy", 2), ("trans_z", 1))
EXPRESSION = slice(80, 144)


class Bottleneck(nnx.Module):
    def __init__(self, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs):
        out = planes * 4
        self.conv1 = conv(cin, planes, 1, rngs=rngs)
        self.bn1 = FrozenBatchNorm(planes)
        self.conv2 = conv(planes, planes, 3, stride=stride, padding=1, rngs=rngs)
        self.bn2 = FrozenBatchNorm(planes)
        self.conv3 = conv(planes, out, 1, rngs=rngs)
        self.bn3 = FrozenBatchNorm(out)
        self.downsample = (nnx.List([conv(cin, out, 1, stride=stride, rngs=rngs), FrozenBatchNorm(out)])
                           if stride != 1 or cin != out else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.bn1(self.conv1(x)))
        h = jax.nn.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        skip = self.downsample[1](self.downsample[0](x)) if self.downsample is not None else x
        return jax.nn.relu(h + skip)


class ResNet50(nnx.Module):
    """torchvision ResNet-50 up to the global average pool: (B, H, W, 3) -> (B, 2048)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = conv(3, 64, 7, stride=2, padding=3, rngs=rngs)
        self.bn1 = FrozenBatchNorm(64)
        cin = 64
        for i, (planes, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))):
            layer = []
            for b in range(blocks):
                layer.append(Bottleneck(cin, planes, stride if b == 0 else 1, rngs=rngs))
                cin = planes * 4
            setattr(self, f"layer{i + 1}", nnx.List(layer))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = max_pool(jax.nn.relu(self.bn1(self.conv1(x))), (3, 3), (2, 2), (1, 1))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = block(x)
        return x.mean(axis=(1, 2))


class ReconNet(nnx.Module):
    """Deep3DFaceRecon `ReconNetWrapper("resnet50", use_last_fc=False)`: faces -> 257 coefficients."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.backbone = ResNet50(rngs=rngs)
        self.final_layers = nnx.List([conv(2048, n, 1, bias=True, rngs=rngs) for _, n in COEFFS])

    def __call__(self, faces: jax.Array) -> jax.Array:
        """faces (B, 224, 224, 3) RGB in [0, 1] -> coefficients (B, 257)."""
        x = self.backbone(faces)[:, None, None, :]
        return jnp.concatenate([layer(x)[:, 0, 0] for layer in self.final_layers], -1)

    def expression(self, faces: jax.Array) -> jax.Array:
        """The 64 expression coefficients (B, 64) that E-FID compares."""
        return self(faces)[:, EXPRESSION]
