"""Hugging Face Wav2Vec2 / WavLM checkpoints <-> the NNX audio encoders.

Module paths equal the transformers state-dict paths, so the table is the common leaf
rules plus three special cases:
- the weight-normed positional conv: two parameters `weight_g` / `weight_v` (flax layout,
  rank 3), read from the new `parametrizations.weight.original0/1` keys or the older
  `weight_g/weight_v` keys, always exported in the new style (those rules come first);
- WavLM's `rel_attn_embed` (an embedding table, not transposed) and `gru_rel_pos_const`;
- `masked_spec_embed` (kept so export reproduces the checkpoint).
Task checkpoints (`Wav2Vec2ForCTC`, `...ForPreTraining`, `WavLMForXVector`, ...) store the
encoder under `wav2vec2.` / `wavlm.`; the loader strips that prefix and drops the known
training or task heads on purpose (`lm_head`, `quantizer`, `project_q`, `project_hid`, ...).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.convert.engine import COMMON_RULES, IDENTITY, KERNEL, ConversionError, Rule, export_tensors, load_into
from emotivetalk_jax.convert.io import read_config, read_weights, resolve_component, write_component
from emotivetalk_jax.models.wav2vec2 import ConfigError, Wav2Vec2Model
from emotivetalk_jax.models.wavlm import WavLMModel

_POS = "encoder.pos_conv_embed.conv"

AUDIO_RULES: tuple[Rule, ...] = (
    Rule(f"{_POS}.parametrizations.weight.original0", f"{_POS}.weight_g", KERNEL),
    Rule(f"{_POS}.parametrizations.weight.original1", f"{_POS}.weight_v", KERNEL),
    Rule(f"{_POS}.weight_g", f"{_POS}.weight_g", KERNEL),  # pre-parametrizations checkpoints
    Rule(f"{_POS}.weight_v", f"{_POS}.weight_v", KERNEL),
    Rule("masked_spec_embed", "masked_spec_embed", IDENTITY),
    Rule("*.rel_attn_embed.weight", "*.rel_attn_embed.embedding", IDENTITY),
    Rule("*.gru_rel_pos_const", "*.gru_rel_pos_const", IDENTITY),
    *COMMON_RULES,
)

# Heads of transformers' task models around the encoder: dropped on load, never exported.
_TASK_HEADS: tuple[Rule, ...] = tuple(
    Rule(pattern, None)
    for pattern in (
        "lm_head.*", "quantizer.*", "project_q.*", "project_hid.*", "projector.*", "classifier.*",
        "layer_weights", "tdnn.*", "feature_extractor.#", "objective.#", "dropout_features.*",
    )
)

MODELS: dict[str, type[Wav2Vec2Model]] = {"wav2vec2": Wav2Vec2Model, "wavlm": WavLMModel}
_ARCH = {"wav2vec2": "Wav2Vec2Model", "wavlm": "WavLMModel"}


def task_rules(prefix: str) -> tuple[Rule, ...]:
    """AUDIO_RULES for a task checkpoint whose encoder keys start with `prefix` (e.g. "wav2vec2.")."""
    prefixed = tuple(Rule(prefix + r.source, r.target, r.transform) for r in AUDIO_RULES)
    return prefixed + _TASK_HEADS


def model_class(config: dict, folder: Path | str = "config") -> type[Wav2Vec2Model]:
    model_type = config.get("model_type")
    if model_type not in MODELS:
        raise ConversionError(
            f"{Path(folder) / 'config.json'} has model_type={model_type!r}; this loader reads only "
            f"{' and '.join(sorted(MODELS))} checkpoints (e.g. facebook/wav2vec2-base-960h, microsoft/wavlm-base-plus)"
        )
    return MODELS[model_type]


def build_audio_encoder(config: dict, *, rngs: nnx.Rngs | None = None, dtype=None, abstract: bool = False):
    """A randomly initialised (or, with `abstract=True`, shape-only) encoder for a HF config dict."""
    cls = model_class(config)
    factory = lambda: cls.from_hf_config(config, rngs=rngs or nnx.Rngs(0), dtype=dtype)
    return nnx.eval_shape(factory) if abstract else factory()


def load_hf_audio_encoder(path: str | os.PathLike, dtype: Any = None) -> Wav2Vec2Model:
    """Load a Hugging Face Wav2Vec2 / WavLM model directory (config.json + model.safetensors).

    Accepts the bare encoder and transformers' task models around it. `dtype` (e.g.
    jnp.bfloat16) casts the parameters and the computation; default float32.
    """
    folder = resolve_component(path, None, "model")
    config = read_config(folder)
    cls = model_class(config, folder)
    try:
        abstract = nnx.eval_shape(lambda: cls.from_hf_config(config, rngs=nnx.Rngs(0), dtype=dtype))
    except ConfigError as e:
        raise ConversionError(f"{folder / 'config.json'}: {e}") from e
    tensors = read_weights(folder, "model")
    prefix = f"{cls.__name__.removesuffix('Model').lower()}."  # "wav2vec2." / "wavlm."
    rules = task_rules(prefix) if any(k.startswith(prefix) for k in tensors) else AUDIO_RULES
    return load_into(abstract, tensors, rules, dtype=dtype or jnp.float32, what=str(folder))


def export_hf_audio_encoder(model: Wav2Vec2Model, path: str | os.PathLike) -> Path:
    """Write `model` as a transformers `Wav2Vec2Model` / `WavLMModel` directory (tensors in the parameters' dtype)."""
    config = dict(model.config)
    config.pop("num_feat_extract_layers", None)  # derived by transformers
    config["architectures"] = [_ARCH[config["model_type"]]]
    for task_key in ("id2label", "label2id", "vocab_size"):
        config.pop(task_key, None)
    return write_component(path, config, export_tensors(model, AUDIO_RULES), "model")
