"""BERT encoder (transformers `BertModel`), inference only, in Flax NNX.

Used for the MiniLM sentence embedder of text emotion control (all-MiniLM-L6-v2: 6 layers,
384 wide, 12 heads). Shape legend: B batch, T tokens, D width, N heads, H head width.

NNX attribute paths equal the transformers state-dict paths
(`encoder.layer.3.attention.self.query`, `embeddings.LayerNorm`), so the checkpoint table
in `convert/bert.py` is a few leaf rules. Absolute position embeddings only; no dropout,
no cross-attention, no KV cache. `sentence_embedding` is sentence-transformers' mean
pooling over valid tokens followed by L2 normalisation.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.models.attention import attend
from emotivetalk_jax.models.layers import layer_norm, linear

ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}

# transformers' BertConfig defaults for every field this port reads.
BERT_DEFAULTS: dict[str, Any] = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "position_embedding_type": "absolute",
    "add_pooling_layer": True,
}


class BertConfigError(ValueError):
    """A Hugging Face BERT config this port cannot build."""


def resolve_bert_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """`cfg` over the BertConfig defaults, checked for what this port supports."""
    out = {k: cfg.get(k, v) for k, v in BERT_DEFAULTS.items()}
    if out["position_embedding_type"] != "absolute":
        raise BertConfigError(f"position_embedding_type={out['position_embedding_type']!r}; only 'absolute' is supported")
    if out["hidden_act"] not in ACTIVATIONS:
        raise BertConfigError(f"hidden_act={out['hidden_act']!r} is not one of {sorted(ACTIVATIONS)}")
    if out["hidden_size"] % out["num_attention_heads"]:
        raise BertConfigError(f"hidden_size {out['hidden_size']} does not divide into {out['num_attention_heads']} heads")
    return out


class BertEmbeddings(nnx.Module):
    """ids, token types (B, T) -> word + position + token-type embeddings, LayerNorm. (B, T, D)."""

    def __init__(self, c: Mapping[str, Any], *, rngs: nnx.Rngs, dtype=None):
        d = c["hidden_size"]
        self.word_embeddings = nnx.Embed(c["vocab_size"], d, dtype=dtype, rngs=rngs)
        self.position_embeddings = nnx.Embed(c["max_position_embeddings"], d, dtype=dtype, rngs=rngs)
        self.token_type_embeddings = nnx.Embed(c["type_vocab_size"], d, dtype=dtype, rngs=rngs)
        self.LayerNorm = layer_norm(d, eps=c["layer_norm_eps"], rngs=rngs, dtype=dtype)

    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        positions = jnp.arange(input_ids.shape[1])[None]
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x + self.position_embeddings(positions))


class BertSelfAttention(nnx.Module):
    """query / key / value projections and masked softmax attention. (B, T, D) -> (B, T, D)."""

    def __init__(self, c: Mapping[str, Any], *, rngs: nnx.Rngs, dtype=None):
        d = c["hidden_size"]
        self.num_heads = c["num_attention_heads"]
        self.attention_impl: str | None = None  # the backend policy's choice (attention.py)
        self.query = linear(d, d, rngs=rngs, dtype=dtype)
        self.key = linear(d, d, rngs=rngs, dtype=dtype)
        self.value = linear(d, d, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        b, t, d = x.shape
        split = lambda y: y.reshape(b, t, self.num_heads, d // self.num_heads)  # (B, T, N, H)
        out = attend(split(self.query(x)), split(self.key(x)), split(self.value(x)), mask=mask[:, None, None, :],
                     implementation=self.attention_impl)
        return out.reshape(b, t, d)


class BertSelfOutput(nnx.Module):
    """dense -> residual -> LayerNorm."""

    def __init__(self, din: int, c: Mapping[str, Any], *, rngs: nnx.Rngs, dtype=None):
        self.dense = linear(din, c["hidden_size"], rngs=rngs, dtype=dtype)
        self.LayerNorm = layer_norm(c["hidden_size"], eps=c["layer_norm_eps"], rngs=rngs, dtype=dtype)

    def __call__(self, h: jax.Array, residual: jax.Array) -> jax.Array:
        return self.LayerNorm(self.dense(h) + residual)


class BertAttention(nnx.Module):
    def __init__(self, c: Mapping[str, Any], *, rngs: nnx.Rngs, dtype=None):
        self.self = BertSelfAttention(c, rngs=rngs, dtype=dtype)
        self.output = BertSelfOutput(c["hidden_size"], c, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        return self.output(self.self(x, mask), x)


class BertIntermediate(nnx.Module):
    def __init__(self, c: Mapping[str, Any], *, rngs: nnx.Rngs, dtype=None):
        self.dense = linear(c["hidden_size"], c["intermediate_size"], rngs=rngs, dtype=dtype)
        self.act = ACTIVATIONS[c["hidden_act"]]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.act(self.dense(x))


class BertLayer(nnx.Module):
    """Post-norm transformer layer: attention, then intermediate + output. (B, T, D) -> (B, T, D)."""

    def __init__(self, c: Mapping[str, Any], *, rngs: nnx.Rngs, dtype=None):
        self.attention = BertAttention(c, rngs=rngs, dtype=dtype)
        self.intermediate = BertIntermediate(c, rngs=rngs, dtype=dtype)
        self.output = BertSelfOutput(c["intermediate_size"], c, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        h = self.attention(x, mask)
        return self.output(self.intermediate(h), h)


class BertEncoder(nnx.Module):
    def __init__(self, c: Mapping[str, Any], *, rngs: nnx.Rngs, dtype=None):
        self.layer = nnx.List([BertLayer(c, rngs=rngs, dtype=dtype) for _ in range(c["num_hidden_layers"])])

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertPooler(nnx.Module):
    """tanh(dense(first token)). (B, T, D) -> (B, D)."""

    def __init__(self, c: Mapping[str, Any], *, rngs: nnx.Rngs, dtype=None):
        self.dense = linear(c["hidden_size"], c["hidden_size"], rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.tanh(self.dense(x[:, 0]))


class BertModel(nnx.Module):
    """transformers `BertModel` for inference: token ids (B, T) -> last hidden state (B, T, D).

    Build with `BertModel.from_hf_config(config_dict, rngs=...)`; load weights with
    `convert.bert.load_hf_bert`. `self.config` holds the resolved config dict.
    """

    def __init__(self, config: Mapping[str, Any], *, rngs: nnx.Rngs, dtype=None):
        self.config = dict(config)
        self.embeddings = BertEmbeddings(config, rngs=rngs, dtype=dtype)
        self.encoder = BertEncoder(config, rngs=rngs, dtype=dtype)
        if config["add_pooling_layer"]:
            self.pooler = BertPooler(config, rngs=rngs, dtype=dtype)

    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any], *, rngs: nnx.Rngs, dtype=None) -> "BertModel":
        return cls(resolve_bert_config(cfg), rngs=rngs, dtype=dtype)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None) -> jax.Array:
        """`attention_mask` (B, T) marks real tokens (1) of right-padded batches, as in HF."""
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        return self.encoder(x, attention_mask.astype(bool))

    def pooled(self, hidden: jax.Array) -> jax.Array:
        """BERT's pooler output (B, D) from the last hidden state (needs the pooling layer)."""
        return self.pooler(hidden)


def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean over valid tokens, as sentence-transformers' Pooling(mean). (B, T, D) -> (B, D)."""
    m = attention_mask.astype(hidden.dtype)[..., None]
    return (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)


def sentence_embedding(model: BertModel, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean-pooled, L2-normalised sentence embeddings (B, D) (all-MiniLM-L6-v2's recipe)."""
    pooled = mean_pool(model(input_ids, attention_mask), attention_mask).astype(jnp.float32)
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
