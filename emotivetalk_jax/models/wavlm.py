"""WavLM audio encoder (transformers `WavLMModel`), inference only, in Flax NNX.

Shape legend: B batch, S samples, T encoder frames, D width, N heads, H head width.
Everything but the attention is `wav2vec2.py`'s. WavLM's attention adds a gated relative
position bias: layer 0 owns `rel_attn_embed` (num_buckets, N) and turns bucketed relative
positions (T5-style, log-spaced beyond num_buckets / 4) into a bias (N, T, T) that every
layer reuses; each layer gates it per query with its own `gru_rel_pos_linear` and
`gru_rel_pos_const`, exactly as transformers does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.models.layers import linear
from emotivetalk_jax.models.wav2vec2 import WAV2VEC2_DEFAULTS, SelfAttention, Wav2Vec2Model

WAVLM_DEFAULTS: dict[str, Any] = {
    **WAV2VEC2_DEFAULTS,
    "model_type": "wavlm",
    "num_buckets": 320,
    "max_bucket_distance": 800,
}


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> jax.Array:
    """(T, T) int32 bucket of key j relative to query i, as `WavLMAttention._relative_positions_bucket`."""
    rel = jnp.arange(length)[None, :] - jnp.arange(length)[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).astype(jnp.int32) * half
    rel = jnp.abs(rel)
    max_exact = half // 2
    is_small = rel < max_exact
    safe = jnp.maximum(rel, 1).astype(jnp.float32)  # log(0) is never selected; avoid -inf casts
    large = jnp.log(safe / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    large = jnp.minimum((max_exact + large).astype(jnp.int32), half - 1)
    return buckets + jnp.where(is_small, rel, large)


class WavLMAttention(SelfAttention):
    """Self-attention with WavLM's gated relative position bias. (B, T, D) -> (B, T, D)."""

    def __init__(self, config: Mapping[str, Any], layer_id: int, *, rngs: nnx.Rngs, dtype=None):
        super().__init__(config, layer_id, rngs=rngs, dtype=dtype)
        n = self.num_heads
        self.num_buckets = config["num_buckets"]
        self.max_distance = config["max_bucket_distance"]
        self.gru_rel_pos_const = nnx.Param(jnp.ones((1, n, 1, 1), jnp.float32))
        self.gru_rel_pos_linear = linear(config["hidden_size"] // n, 8, rngs=rngs, dtype=dtype)
        if layer_id == 0:
            self.rel_attn_embed = nnx.Embed(self.num_buckets, n, dtype=dtype, rngs=rngs)

    def compute_bias(self, length: int) -> jax.Array:
        """(N, T, T) relative position bias, before gating (layer 0 only)."""
        buckets = relative_position_buckets(length, self.num_buckets, self.max_distance)
        return jnp.transpose(self.rel_attn_embed(buckets), (2, 0, 1))

    def __call__(self, x: jax.Array, mask: jax.Array | None = None, position_bias: jax.Array | None = None):
        if position_bias is None:
            position_bias = self.compute_bias(x.shape[1])
        proj = self.gru_rel_pos_linear(self._heads(x))  # (B, T, N, 8)
        proj = proj.reshape(*proj.shape[:-1], 2, 4).sum(-1)
        gate_a, gate_b = jnp.split(jax.nn.sigmoid(proj), 2, axis=-1)  # (B, T, N, 1) each
        const = self.gru_rel_pos_const.value.reshape(1, 1, -1, 1).astype(proj.dtype)
        gate = (gate_a * (gate_b * const - 1.0) + 2.0)[..., 0]  # (B, T, N)
        bias = jnp.transpose(gate, (0, 2, 1))[..., None] * position_bias[None].astype(gate.dtype)
        return self.attend(x, mask, bias)


class WavLMModel(Wav2Vec2Model):
    """transformers `WavLMModel` for inference: (B, S) waveform -> all hidden states.

    Same interface as `Wav2Vec2Model`; build with `WavLMModel.from_hf_config(cfg, rngs=...)`.
    """

    defaults = WAVLM_DEFAULTS
    attention_cls = WavLMAttention
