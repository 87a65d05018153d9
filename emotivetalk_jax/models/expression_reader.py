"""A frame -> the expression parameters drawn in it (not in the paper; the synthetic demo's
stand-in for a facial action-unit or landmark detector).

Stage 2's expression term (`expression_loss_weight`) reads the decoded denoised clip. Through
the stage-0 expression encoder it cannot reward the mouth corners: that encoder is never asked
for anything inside the lip box (stage 0's masks, the paper's split) and moves 30x less for a
corner than for an inner brow (`benchmarks/expression_sensitivity.py`). The reader is trained
by regression on the synthetic domain's own parameters (brow_raise, brow_inner, eye_open,
corner: `synthetic_face.EXPRESSION_KEYS`), so every cue counts in its units (stage `reader`);
stage 2 takes it as `init.expression_reader` and compares its reading of D with its reading of
the ground-truth frames, never with the labels.

Shape legend: S image size, P parameters read.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.models.face_encoders import FaceBackbone
from emotivetalk_jax.models.layers import linear

READER_CHANNELS = (16, 32, 64)
READER_FEATURES = 64


class ExpressionReader(nnx.Module):
    """Images (..., S, S, 3) in [-1, 1] -> (..., P): a strided conv backbone whose last map is
    flattened (a mean pool would lose where a cue is) into a linear read-out."""

    def __init__(self, image_size: int, outputs: int = 4, *, rngs: nnx.Rngs):
        self.image_size = image_size
        self.backbone = FaceBackbone(READER_CHANNELS, READER_FEATURES, pool="flatten", image_size=image_size,
                                     rngs=rngs)
        self.head = linear(READER_FEATURES, outputs, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        lead, s = images.shape[:-3], self.image_size
        x = images.reshape(-1, *images.shape[-3:])
        if x.shape[1:3] != (s, s):
            x = jax.image.resize(x, (x.shape[0], s, s, x.shape[-1]), "bilinear")
        return self.head(jax.nn.silu(self.backbone(x))).astype(jnp.float32).reshape(*lead, -1)
