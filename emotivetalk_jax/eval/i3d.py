"""FVD's I3D preprocessing: the first `frames` frames, the shorter side resized to 224
(bilinear, align_corners=False), centre crop, values in [-1, 1]. The network is
`models.metrics.i3d.InceptionI3d` (re-exported here with its input geometry).

Shape legend: T frames, H, W spatial.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from emotivetalk_jax.models.metrics.i3d import FEATURES, MIN_FRAMES, SIZE, InceptionI3d  # noqa: F401
from emotivetalk_jax.models.metrics.layers import resize_bilinear


def preprocess(frames: np.ndarray, num_frames: int | None = None) -> np.ndarray:
    """uint8 frames (T, H, W, 3) -> (T', 224, 224, 3) float32 in [-1, 1] (FVD's preprocessing).

    The first `num_frames` frames (all if None); the shorter side to 224, then a centre crop.
    """
    x = np.asarray(frames)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected video frames (T, H, W, 3); got shape {x.shape}")
    x = x[:num_frames] if num_frames else x
    if x.shape[0] < MIN_FRAMES:
        raise ValueError(f"FVD's I3D needs at least {MIN_FRAMES} frames; the clip has {x.shape[0]}")
    t, h, w, _ = x.shape
    scale = SIZE / min(h, w)
    size = (SIZE, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), SIZE)
    y = np.asarray(resize_bilinear(jnp.asarray(x, jnp.float32) / 255.0, size))
    top, left = (y.shape[1] - SIZE) // 2, (y.shape[2] - SIZE) // 2
    return y[:, top:top + SIZE, left:left + SIZE] * 2.0 - 1.0
