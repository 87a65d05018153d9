"""Hugging Face BERT checkpoints (e.g. all-MiniLM-L6-v2) <-> the NNX `BertModel`.

Module paths equal the transformers state-dict paths, so the table is the common leaf
rules plus BERT's capitalised `LayerNorm`, its three embedding tables (not transposed) and
the `position_ids` buffer (dropped: positions are computed). Task checkpoints
(`BertForSequenceClassification`, `BertForMaskedLM`, ...) store the encoder under `bert.`;
the loader strips that prefix and drops their heads (`cls.*`, `classifier.*`) on purpose.
A checkpoint without `pooler.*` keys builds a model without the pooling layer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.convert.engine import COMMON_RULES, IDENTITY, ConversionError, Rule, export_tensors, load_into
from emotivetalk_jax.convert.io import check_class, read_config, read_weights, resolve_component, write_component
from emotivetalk_jax.models.bert import BertConfigError, BertModel

BERT_RULES: tuple[Rule, ...] = (
    Rule("*.position_ids", None),
    Rule("*.#_embeddings.weight", "*.#_embeddings.embedding", IDENTITY),
    Rule("*.LayerNorm.weight", "*.LayerNorm.scale", IDENTITY),
    Rule("*.LayerNorm.bias", "*.LayerNorm.bias", IDENTITY),
    *COMMON_RULES,
)

_TASK_HEADS: tuple[Rule, ...] = (Rule("cls.*", None), Rule("classifier.*", None), Rule("qa_outputs.*", None))


def task_rules(prefix: str = "bert.") -> tuple[Rule, ...]:
    """BERT_RULES for a task checkpoint whose encoder keys start with `prefix`."""
    return tuple(Rule(prefix + r.source, r.target, r.transform) for r in BERT_RULES) + _TASK_HEADS


def build_bert(config: dict, *, rngs: nnx.Rngs | None = None, dtype=None, abstract: bool = False) -> BertModel:
    """A randomly initialised (or, with `abstract=True`, shape-only) BertModel for a HF config dict."""
    factory = lambda: BertModel.from_hf_config(config, rngs=rngs or nnx.Rngs(0), dtype=dtype)
    return nnx.eval_shape(factory) if abstract else factory()


def load_hf_bert(path: str | os.PathLike, dtype: Any = None) -> BertModel:
    """Load a Hugging Face BERT directory (config.json + model.safetensors) as a `BertModel`."""
    folder = resolve_component(path, None, "model")
    config = read_config(folder)
    if config.get("model_type", "bert") != "bert":
        raise ConversionError(f"{folder / 'config.json'} has model_type={config.get('model_type')!r}; expected a BERT model")
    check_class(config, ("BertModel", "BertForMaskedLM", "BertForSequenceClassification", "BertForPreTraining"),
                folder, key="architectures")
    tensors = read_weights(folder, "model")
    prefixed = any(k.startswith("bert.") for k in tensors)
    has_pooler = any(k.startswith(("pooler.", "bert.pooler.")) for k in tensors)
    try:
        abstract = build_bert({**config, "add_pooling_layer": has_pooler}, dtype=dtype, abstract=True)
    except BertConfigError as e:
        raise ConversionError(f"{folder / 'config.json'}: {e}") from e
    rules = task_rules() if prefixed else BERT_RULES
    return load_into(abstract, tensors, rules, dtype=dtype or jnp.float32, what=str(folder))


def export_hf_bert(model: BertModel, path: str | os.PathLike) -> Path:
    """Write `model` as a transformers `BertModel` directory (config.json + model.safetensors)."""
    config = {k: v for k, v in model.config.items() if k != "add_pooling_layer"}
    config["architectures"] = ["BertModel"]
    return write_component(path, config, export_tensors(model, BERT_RULES), "model")
