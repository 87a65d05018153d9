"""The `audio` stage's model: the audio encoder with a small lip head on its windows.

Shape legend: B batch, F frames, W = 2 c + 1 audio window, D encoder width, Dl lip width.

The paper's wav2vec2 comes pretrained on speech; the CPU demo has no downloaded weights, so
its tiny wav2vec2 learns to hear lips here: the encoder's per-frame windows A_w go through
`head` to a lip latent and are trained with the paper's lip loss (eq. 4-6) against the
frozen lip encoder's l_v. Only the encoder (`encoder.*`) is kept: stage 1's projector then
learns l_a from its (cached, whole-utterance) features, as it would from a pretrained
wav2vec2. The head is the probe that trains it and is thrown away.
"""

from __future__ import annotations

import jax
from flax import nnx

from emotivetalk_jax.models.layers import layer_norm, linear


class LipHead(nnx.Module):
    """A_w (..., W, D) -> (..., Dl): LayerNorm over the flattened window, Linear, GELU, Linear."""

    def __init__(self, window: int, dim: int, lip_dim: int, hidden: int = 64, *, rngs: nnx.Rngs):
        self.norm = layer_norm(window * dim, rngs=rngs)
        self.fc1 = linear(window * dim, hidden, rngs=rngs)
        self.fc2 = linear(hidden, lip_dim, rngs=rngs)

    def __call__(self, windows: jax.Array) -> jax.Array:
        x = windows.reshape(*windows.shape[:-2], -1)
        return self.fc2(jax.nn.gelu(self.fc1(self.norm(x))))


class AudioLipModel(nnx.Module):
    """`encoder` (a Wav2Vec2Model) + `head` (LipHead)."""

    def __init__(self, encoder: nnx.Module, head: LipHead):
        self.encoder, self.head = encoder, head
