"""Wav2Vec2 audio encoder (transformers `Wav2Vec2Model`), inference only, in Flax NNX.

Shape legend: B batch, S audio samples, T encoder frames (one per `stride` samples, 20 ms
at 16 kHz for the standard conv stack), C conv channels, D width, N heads, K kernel.
Channels-last throughout. NNX attribute paths equal the transformers state-dict paths
(`feature_extractor.conv_layers.0.conv`, `encoder.layers.3.attention.q_proj`), so the
checkpoint table in `convert/audio.py` is a handful of leaf rules.

Covered: `feat_extract_norm` "group" (base) and "layer" (large), `do_stable_layer_norm`
true and false, `conv_bias`, the weight-normed positional convolution (kept as its two
parameters `weight_g`, `weight_v`, combined at call time over dim 2 exactly as
`torch.nn.utils.parametrizations.weight_norm(conv, dim=2)` does) and `masked_spec_embed`
(kept only so export reproduces checkpoints; no masking happens at call time).
Not covered (refused with a clear error): the output adapter (`add_adapter`) and MMS
attention adapters (`adapter_attn_dim`). `WavLMModel` lives in `wavlm.py` and reuses
everything here but the attention.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from emotivetalk_jax.models.attention import attend
from emotivetalk_jax.models.layers import group_norm, layer_norm, linear, trace_safe_rngs

ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}

# transformers' Wav2Vec2Config defaults for every field this port reads.
WAV2VEC2_DEFAULTS: dict[str, Any] = {
    "model_type": "wav2vec2",
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "feat_extract_norm": "group",
    "feat_extract_activation": "gelu",
    "conv_dim": [512] * 7,
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_bias": False,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "do_stable_layer_norm": False,
    "mask_time_prob": 0.05,
    "mask_feature_prob": 0.0,
    "add_adapter": False,
    "adapter_attn_dim": None,
}

_CONV_NORM_EPS = 1e-5  # torch GroupNorm / LayerNorm defaults inside the conv stack


class ConfigError(ValueError):
    """A Hugging Face audio-encoder config this port cannot build."""


def resolve_config(cfg: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """`cfg` over `defaults`, as a plain dict, checked for what this port supports."""
    out = {**defaults, **dict(cfg)}
    for key in ("conv_dim", "conv_stride", "conv_kernel"):
        out[key] = [int(v) for v in out[key]]
    out["num_feat_extract_layers"] = len(out["conv_dim"])
    name = out.get("model_type", "?")
    if out["feat_extract_norm"] not in ("group", "layer"):
        raise ConfigError(f"{name} config: feat_extract_norm={out['feat_extract_norm']!r}; expected 'group' or 'layer'")
    if not len(out["conv_dim"]) == len(out["conv_stride"]) == len(out["conv_kernel"]):
        raise ConfigError(f"{name} config: conv_dim, conv_stride and conv_kernel differ in length")
    if out["hidden_size"] % out["num_attention_heads"]:
        raise ConfigError(f"{name} config: hidden_size {out['hidden_size']} does not divide into "
                          f"{out['num_attention_heads']} heads")
    if out.get("add_adapter"):
        raise ConfigError(f"{name} config: add_adapter=True (output adapter) is not supported; use the base encoder")
    if out.get("adapter_attn_dim") is not None:
        raise ConfigError(f"{name} config: adapter_attn_dim is set (MMS attention adapters) and is not supported")
    for key in ("hidden_act", "feat_extract_activation"):
        if out[key] not in ACTIVATIONS:
            raise ConfigError(f"{name} config: {key}={out[key]!r} is not one of {sorted(ACTIVATIONS)}")
    return out


def conv_geometry(config: Mapping[str, Any]) -> tuple[int, int]:
    """(stride, receptive field) of the conv stack in samples: 320 and 400 for the standard stack.

    Encoder frame t sees samples [stride * t, stride * t + receptive) of the input.
    """
    stride, field = 1, 1
    for k, s in zip(config["conv_kernel"], config["conv_stride"]):
        field += (k - 1) * stride
        stride *= s
    return stride, field


def feature_lengths(config: Mapping[str, Any], num_samples):
    """Number of encoder frames for `num_samples` input samples (int or integer array)."""
    n = num_samples
    for k, s in zip(config["conv_kernel"], config["conv_stride"]):
        n = (n - k) // s + 1
    return n


class ConvLayer(nnx.Module):
    """One feature-encoder layer: conv -> [GroupNorm(C groups) | LayerNorm | none] -> activation.

    (B, S_in, C_in) -> (B, S_out, C_out).
    """

    def __init__(self, config: Mapping[str, Any], layer_id: int, *, rngs: nnx.Rngs, dtype=None):
        cin = config["conv_dim"][layer_id - 1] if layer_id > 0 else 1
        cout = config["conv_dim"][layer_id]
        self.norm_kind = "layer" if config["feat_extract_norm"] == "layer" else ("group" if layer_id == 0 else None)
        self.conv = nnx.Conv(cin, cout, (config["conv_kernel"][layer_id],), strides=(config["conv_stride"][layer_id],),
                             padding="VALID", use_bias=config["conv_bias"], dtype=dtype, rngs=rngs)
        if self.norm_kind == "group":
            self.layer_norm = group_norm(cout, eps=_CONV_NORM_EPS, groups=cout, rngs=rngs, dtype=dtype)
        elif self.norm_kind == "layer":
            self.layer_norm = layer_norm(cout, eps=_CONV_NORM_EPS, rngs=rngs, dtype=dtype)
        self.act = ACTIVATIONS[config["feat_extract_activation"]]

    def __call__(self, x: jax.Array, norm_stats: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        x = self.conv(x)
        if self.norm_kind == "group" and norm_stats is not None:
            # GroupNorm with C groups normalises each channel over time; chunked encoding passes
            # the whole utterance's per-channel (mean, var) so every chunk sees the same statistics.
            mean, var = norm_stats
            x = (x - mean) * jax.lax.rsqrt(var + _CONV_NORM_EPS)
            x = x * self.layer_norm.scale.value + self.layer_norm.bias.value
        elif self.norm_kind is not None:
            x = self.layer_norm(x)
        return self.act(x)


class FeatureEncoder(nnx.Module):
    """The conv stack: (B, S) waveform -> (B, T, C) features."""

    def __init__(self, config: Mapping[str, Any], *, rngs: nnx.Rngs, dtype=None):
        self.conv_layers = nnx.List(
            [ConvLayer(config, i, rngs=rngs, dtype=dtype) for i in range(config["num_feat_extract_layers"])]
        )

    def __call__(self, input_values: jax.Array, norm_stats=None) -> jax.Array:
        x = input_values[..., None]
        for i, layer in enumerate(self.conv_layers):
            x = layer(x, norm_stats if i == 0 else None)
        return x

    def first_conv(self, input_values: jax.Array) -> jax.Array:
        """Layer 0's conv output before its norm, (B, S0, C): what GroupNorm takes statistics of."""
        return self.conv_layers[0].conv(input_values[..., None])


class FeatureProjection(nnx.Module):
    """LayerNorm(C) -> Linear(C, D)."""

    def __init__(self, config: Mapping[str, Any], *, rngs: nnx.Rngs, dtype=None):
        c = config["conv_dim"][-1]
        self.layer_norm = layer_norm(c, eps=config["layer_norm_eps"], rngs=rngs, dtype=dtype)
        self.projection = linear(c, config["hidden_size"], rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.projection(self.layer_norm(x))


class WeightNormConv1d(nnx.Module):
    """Grouped Conv1d whose weight is `weight_g * weight_v / ||weight_v||`, the norm taken per
    kernel tap (torch weight_norm with dim=2). Stored in flax layout: `weight_v` (K, D/groups, D),
    `weight_g` (K, 1, 1), `bias` (D,). Padding K // 2 on both sides, as the torch module.
    """

    def __init__(self, dim: int, kernel: int, groups: int, *, rngs: nnx.Rngs, dtype=None):
        key = rngs.params()
        self.groups, self.kernel_size, self.dtype = groups, kernel, dtype
        v = jax.random.normal(key, (kernel, dim // groups, dim), jnp.float32) * (2.0 / (kernel * dim)) ** 0.5
        self.weight_v = nnx.Param(v)
        self.weight_g = nnx.Param(jnp.sqrt(jnp.sum(v * v, axis=(1, 2), keepdims=True)))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))

    def weight(self) -> jax.Array:
        v, g = self.weight_v.value, self.weight_g.value
        return g * v / jnp.sqrt(jnp.sum(v * v, axis=(1, 2), keepdims=True))

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        pad = self.kernel_size // 2
        y = jax.lax.conv_general_dilated(
            x.astype(dtype), self.weight().astype(dtype), window_strides=(1,), padding=((pad, pad),),
            dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=self.groups,
        )
        return y + self.bias.value.astype(dtype)


class PositionalConvEmbedding(nnx.Module):
    """(B, T, D) -> (B, T, D): weight-normed grouped conv, trimmed to T, activation."""

    def __init__(self, config: Mapping[str, Any], *, rngs: nnx.Rngs, dtype=None):
        self.conv = WeightNormConv1d(config["hidden_size"], config["num_conv_pos_embeddings"],
                                     config["num_conv_pos_embedding_groups"], rngs=rngs, dtype=dtype)
        self.act = ACTIVATIONS[config["feat_extract_activation"]]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.act(self.conv(x)[:, : x.shape[1]])  # drops the extra frame of an even kernel


class SelfAttention(nnx.Module):
    """Multi-head self-attention with q/k/v/out projections: (B, T, D) -> (B, T, D).

    `mask` (B, 1, 1, T) bool keeps valid keys; `bias` broadcasts to (B, N, T, T).
    """

    def __init__(self, config: Mapping[str, Any], layer_id: int, *, rngs: nnx.Rngs, dtype=None):
        d = config["hidden_size"]
        self.num_heads = config["num_attention_heads"]
        self.attention_impl: str | None = None  # the backend policy's choice (attention.py)
        self.k_proj = linear(d, d, rngs=rngs, dtype=dtype)
        self.v_proj = linear(d, d, rngs=rngs, dtype=dtype)
        self.q_proj = linear(d, d, rngs=rngs, dtype=dtype)
        self.out_proj = linear(d, d, rngs=rngs, dtype=dtype)

    def _heads(self, t: jax.Array) -> jax.Array:
        return t.reshape(*t.shape[:-1], self.num_heads, t.shape[-1] // self.num_heads)

    def attend(self, x: jax.Array, mask: jax.Array | None, bias: jax.Array | None) -> jax.Array:
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        if bias is not None:
            bias = bias.astype(q.dtype)
        out = attend(q, k, v, bias=bias, mask=mask, implementation=self.attention_impl)
        return self.out_proj(out.reshape(*out.shape[:-2], -1))

    def __call__(self, x: jax.Array, mask: jax.Array | None = None, position_bias: jax.Array | None = None):
        return self.attend(x, mask, None)


class FeedForward(nnx.Module):
    """Linear(D, I) -> act -> Linear(I, D)."""

    def __init__(self, config: Mapping[str, Any], *, rngs: nnx.Rngs, dtype=None):
        self.intermediate_dense = linear(config["hidden_size"], config["intermediate_size"], rngs=rngs, dtype=dtype)
        self.output_dense = linear(config["intermediate_size"], config["hidden_size"], rngs=rngs, dtype=dtype)
        self.act = ACTIVATIONS[config["hidden_act"]]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.output_dense(self.act(self.intermediate_dense(x)))


class EncoderLayer(nnx.Module):
    """Post-norm (base) or pre-norm (`do_stable_layer_norm`, large) transformer layer."""

    def __init__(self, config: Mapping[str, Any], layer_id: int, *, rngs: nnx.Rngs, dtype=None, attention_cls=None):
        eps = config["layer_norm_eps"]
        self.stable = bool(config["do_stable_layer_norm"])
        self.attention = (attention_cls or SelfAttention)(config, layer_id, rngs=rngs, dtype=dtype)
        self.layer_norm = layer_norm(config["hidden_size"], eps=eps, rngs=rngs, dtype=dtype)
        self.feed_forward = FeedForward(config, rngs=rngs, dtype=dtype)
        self.final_layer_norm = layer_norm(config["hidden_size"], eps=eps, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, mask=None, position_bias=None) -> jax.Array:
        if self.stable:
            x = x + self.attention(self.layer_norm(x), mask, position_bias)
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.attention(x, mask, position_bias))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nnx.Module):
    """Positional conv + transformer layers. Returns every hidden state, HF style."""

    def __init__(self, config: Mapping[str, Any], *, rngs: nnx.Rngs, dtype=None, attention_cls=None):
        self.stable = bool(config["do_stable_layer_norm"])
        self.pos_conv_embed = PositionalConvEmbedding(config, rngs=rngs, dtype=dtype)
        self.layer_norm = layer_norm(config["hidden_size"], eps=config["layer_norm_eps"], rngs=rngs, dtype=dtype)
        self.layers = nnx.List([
            EncoderLayer(config, i, rngs=rngs, dtype=dtype, attention_cls=attention_cls)
            for i in range(config["num_hidden_layers"])
        ])

    def __call__(self, x: jax.Array, valid: jax.Array | None, final_norm: bool) -> tuple[jax.Array, ...]:
        mask = None
        if valid is not None:
            x = jnp.where(valid[..., None], x, 0)
            mask = valid[:, None, None, :]
        x = x + self.pos_conv_embed(x)
        if not self.stable:
            x = self.layer_norm(x)
        position_bias = None
        if len(self.layers) and hasattr(self.layers[0].attention, "compute_bias"):
            position_bias = self.layers[0].attention.compute_bias(x.shape[1])
        states = [x]
        for layer in self.layers:
            x = layer(x, mask, position_bias)
            states.append(x)
        if self.stable and final_norm:
            states[-1] = self.layer_norm(x)
        return tuple(states)


class Wav2Vec2Model(nnx.Module):
    """transformers `Wav2Vec2Model` for inference: (B, S) waveform -> all hidden states.

    Build with `Wav2Vec2Model.from_hf_config(config_dict, rngs=...)`; load weights with
    `convert.audio.load_hf_audio_encoder`. `self.config` holds the resolved config dict.
    """

    defaults = WAV2VEC2_DEFAULTS
    attention_cls = SelfAttention

    def __init__(self, config: Mapping[str, Any], *, rngs: nnx.Rngs, dtype=None):
        self.config = dict(config)
        self.feature_extractor = FeatureEncoder(config, rngs=rngs, dtype=dtype)
        self.feature_projection = FeatureProjection(config, rngs=rngs, dtype=dtype)
        if config["mask_time_prob"] > 0 or config["mask_feature_prob"] > 0:
            # Unused at inference; present in the checkpoint whenever the HF model has it.
            self.masked_spec_embed = nnx.Param(jax.random.uniform(rngs.params(), (config["hidden_size"],)))
        self.encoder = Encoder(config, rngs=rngs, dtype=dtype, attention_cls=self.attention_cls)

    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any], *, rngs: nnx.Rngs, dtype=None):
        return cls(resolve_config(cfg, cls.defaults), rngs=trace_safe_rngs(rngs), dtype=dtype)

    def feature_lengths(self, num_samples):
        return feature_lengths(self.config, num_samples)

    def __call__(
        self,
        input_values: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        final_norm: bool = False,
        feature_norm_stats: tuple[jax.Array, jax.Array] | None = None,
    ) -> tuple[jax.Array, ...]:
        """(B, S) float waveform (already zero-mean/unit-variance normalised) -> hidden states.

        Returns `num_hidden_layers + 1` arrays (B, T, D), exactly transformers 5's
        `output_hidden_states=True`: the encoder input (after the positional conv, and after
        `encoder.layer_norm` for non-stable models), then every layer's output. For
        stable-layer-norm models transformers 5 leaves `encoder.layer_norm` off the last one
        (transformers 4 applied it); `final_norm=True` applies it, giving `last_hidden_state`.

        `attention_mask` (B, S) marks valid samples (1) of right-padded batches, as in HF.
        `feature_norm_stats`: per-channel (mean, var) for a group-norm conv stack's first
        layer, used by chunked encoding so every chunk normalises like the whole utterance.
        """
        feats = self.feature_extractor(input_values, feature_norm_stats)
        valid = None
        if attention_mask is not None:
            lengths = self.feature_lengths(jnp.sum(attention_mask.astype(jnp.int32), axis=-1))
            valid = jnp.arange(feats.shape[1])[None, :] < lengths[:, None]
        return self.encoder(self.feature_projection(feats), valid, final_norm)


def select_layers(
    hidden_states: Sequence[jax.Array], layers: int | Sequence[int] = -1, weights: Sequence[float] | None = None
) -> jax.Array:
    """One hidden state (`layers` an int, negative counts from the end) or a weighted mean of
    several (`weights` default uniform, normalised to sum 1)."""
    if isinstance(layers, (int, np.integer)):
        return hidden_states[int(layers)]
    layers = list(layers)
    w = np.full(len(layers), 1.0 / len(layers)) if weights is None else np.asarray(weights, np.float64)
    if len(w) != len(layers):
        raise ValueError(f"{len(layers)} layers but {len(w)} weights; give one weight per layer")
    w = w / w.sum()
    return sum(float(wi) * hidden_states[i] for wi, i in zip(w, layers))
