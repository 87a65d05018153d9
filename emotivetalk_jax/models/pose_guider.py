"""ETHD's explicit per-frame head-pose condition (beyond the paper; issue 30).

A pose (roll degrees, dx, dy image fractions, scale; `data.pose.POSE_KEYS`) of each frame
relative to the reference portrait becomes a map at latent resolution (`pose_maps`): every
cell's coordinates in the moved face's own frame, (u, v), and a soft face blob
exp(-(u^2 + v^2)), where the reference face sits at the centre of the face box mask and has its
half size. A small conv net (`PoseGuider`, as the pose guiders of AnimateAnyone / EchoMimic)
turns the maps into a residual added to conv_in's output. Its output conv starts at zero
(kernel and bias), so a fresh ETHD with the guider computes exactly what SVD's UNet computes.

Shape legend: B batch, F frames, H, W latent size, C0 the UNet's first width, K hidden width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.models.layers import conv

MAP_CHANNELS = 3


def pose_maps(pose: jax.Array, face_mask: jax.Array | None, hw: tuple[int, int]) -> jax.Array:
    """pose (B, F, 4), face_mask (B, H, W, 1) box mask at latent resolution (None: the whole
    frame) -> maps (B, F, H, W, 3): u, v (face-local, 1 = the face box's half size) and the blob."""
    h, w = hw
    b = pose.shape[0]
    pose = pose.astype(jnp.float32)
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) + 0.5, jnp.arange(w, dtype=jnp.float32) + 0.5,
                          indexing="ij")
    if face_mask is None:
        m = jnp.ones((b, h, w), jnp.float32)
    else:
        m = face_mask[..., 0].astype(jnp.float32)
    area = jnp.maximum(m.sum((1, 2)), 1.0)  # (B,)
    cx, cy = (m * xs).sum((1, 2)) / area, (m * ys).sum((1, 2)) / area
    half = 0.5 * jnp.sqrt(area)  # (B,) half side of a square of the box's area
    roll, dx, dy, scale = (pose[..., i] for i in range(4))  # (B, F)
    th = jnp.radians(roll)[..., None, None]
    qx = xs - (cx[:, None, None, None] + (dx * w)[..., None, None])  # (B, F, H, W)
    qy = ys - (cy[:, None, None, None] + (dy * h)[..., None, None])
    unit = (jnp.maximum(scale, 1e-3) * half[:, None])[..., None, None]
    u = (jnp.cos(th) * qx + jnp.sin(th) * qy) / unit
    v = (-jnp.sin(th) * qx + jnp.cos(th) * qy) / unit
    blob = jnp.exp(-(u * u + v * v))
    return jnp.stack([jnp.clip(u, -3, 3), jnp.clip(v, -3, 3), blob], -1)


class PoseGuider(nnx.Module):
    """maps (B*F, H, W, 3) -> residual (B*F, H, W, C0): conv3 -> SiLU -> conv3 -> SiLU -> `to_out`
    conv3 (zero kernel and bias at init)."""

    def __init__(self, out_channels: int, hidden: int, *, rngs: nnx.Rngs, dtype=None):
        self.conv_in = conv(MAP_CHANNELS, hidden, 3, padding=1, rngs=rngs, dtype=dtype)
        self.conv_mid = conv(hidden, hidden, 3, padding=1, rngs=rngs, dtype=dtype)
        self.to_out = conv(hidden, out_channels, 3, padding=1, rngs=rngs, dtype=dtype)
        self.to_out.kernel.value = jnp.zeros_like(self.to_out.kernel.value)
        self.to_out.bias.value = jnp.zeros_like(self.to_out.bias.value)

    def __call__(self, maps: jax.Array) -> jax.Array:
        x = jax.nn.silu(self.conv_in(maps))
        return self.to_out(jax.nn.silu(self.conv_mid(x)))
