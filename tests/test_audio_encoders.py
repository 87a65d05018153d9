"""Wav2Vec2 / WavLM NNX ports against transformers 5 (PyTorch, CPU fp32), through the converter."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import torch
import transformers

from flax import nnx  # noqa: E402

from emotivetalk_jax.convert.audio import build_audio_encoder, export_hf_audio_encoder, load_hf_audio_encoder  # noqa: E402
from emotivetalk_jax.convert.engine import ConversionError, count_params  # noqa: E402

pytestmark = pytest.mark.torch

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
            conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2), num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2)
# Few buckets and a short max distance so 24 frames reach the log-spaced and the clamped buckets.
WAVLM_EXTRA = dict(num_buckets=16, max_bucket_distance=20)
KINDS = {"wav2vec2": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model),
         "wavlm": (transformers.WavLMConfig, transformers.WavLMModel)}
CASES = [(kind, norm, stable) for kind in KINDS for norm in ("group", "layer") for stable in (False, True)]
ID = lambda c: f"{c[0]}-{c[1]}-{'stable' if c[2] else 'post'}"  # noqa: E731


def _config(kind, norm, stable, **kw):
    cfg_cls, _ = KINDS[kind]
    extra = WAVLM_EXTRA if kind == "wavlm" else {}
    return cfg_cls(**TINY, **extra, feat_extract_norm=norm, do_stable_layer_norm=stable, conv_bias=stable, **kw)


def _perturb(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # every parameter, weight-norm g and the WavLM gate constant included
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(kind, norm, stable) -> (checkpoint dir, torch model); batch of 2 inputs with a padding mask."""
    out = {}
    for i, case in enumerate(CASES):
        torch.manual_seed(i)
        model = _perturb(KINDS[case[0]][1](_config(*case)), seed=i)
        folder = tmp_path_factory.mktemp(ID(case))
        model.save_pretrained(folder, safe_serialization=True)
        out[case] = (folder, model)
    return out


@pytest.fixture(scope="module")
def inputs():
    x = np.random.default_rng(0).standard_normal((2, 8000)).astype(np.float32)
    mask = np.ones((2, 8000), np.int64)
    mask[1, 5500:] = 0
    return x, mask


def _torch_states(model, x, mask=None):
    with torch.no_grad():
        out = model(torch.from_numpy(x), attention_mask=None if mask is None else torch.from_numpy(mask),
                    output_hidden_states=True)
    return [h.numpy() for h in out.hidden_states], out.last_hidden_state.numpy()


def _max_errors(ours, ref):
    assert len(ours) == len(ref)
    return [float(np.abs(np.asarray(a) - b).max()) for a, b in zip(ours, ref)]


@pytest.mark.parametrize("case", CASES, ids=ID)
def test_parity_every_hidden_state(checkpoints, inputs, case):
    folder, ref = checkpoints[case]
    x, mask = inputs
    model = load_hf_audio_encoder(folder)
    for m in (None, mask):
        states, last = _torch_states(ref, x, m)
        ours = model(x, None if m is None else mask)
        errors = _max_errors(ours, states)
        assert max(errors) < 1e-4, (case, m is not None, errors)
        final = model(x, None if m is None else mask, final_norm=True)[-1]
        assert float(np.abs(np.asarray(final) - last).max()) < 1e-4  # = last_hidden_state


def test_jit_and_abstract_param_count(checkpoints, inputs):
    folder, ref = checkpoints[("wavlm", "layer", True)]
    model = load_hf_audio_encoder(folder)
    eager = model(inputs[0])
    jitted = nnx.jit(lambda m, x: m(x))(model, inputs[0])
    assert max(_max_errors(jitted, [np.asarray(h) for h in eager])) < 1e-5
    abstract = build_audio_encoder(json.loads((folder / "config.json").read_text()), abstract=True)
    assert count_params(abstract) == sum(p.numel() for p in ref.parameters())


def test_old_style_weight_norm_keys(checkpoints, tmp_path, inputs):
    folder, ref = checkpoints[("wav2vec2", "group", False)]
    tensors = load_file(str(folder / "model.safetensors"))
    prefix = "encoder.pos_conv_embed.conv."
    old = {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                               "weight_v"): v for k, v in tensors.items()}
    assert f"{prefix}weight_g" in old and f"{prefix}weight_v" in old
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    save_file(old, str(tmp_path / "model.safetensors"))
    a = nnx.state(load_hf_audio_encoder(folder), nnx.Param)
    b = nnx.state(load_hf_audio_encoder(tmp_path), nnx.Param)
    for (pa, va), (pb, vb) in zip(nnx.to_flat_state(a), nnx.to_flat_state(b)):
        assert pa == pb and np.array_equal(np.asarray(va.value), np.asarray(vb.value))


@pytest.mark.parametrize("case", [("wav2vec2", "group", False), ("wavlm", "layer", True)], ids=ID)
def test_export_round_trip(checkpoints, tmp_path, inputs, case):
    folder, ref = checkpoints[case]
    model = load_hf_audio_encoder(folder)
    export_hf_audio_encoder(model, tmp_path)
    # Every HF tensor reproduced exactly, in the new weight-norm key style, nothing extra.
    original, exported = load_file(str(folder / "model.safetensors")), load_file(str(tmp_path / "model.safetensors"))
    assert sorted(original) == sorted(exported)
    for key in original:
        assert np.array_equal(original[key], exported[key]), key
    # Export then load is bit-identical.
    again = load_hf_audio_encoder(tmp_path)
    for (pa, va), (pb, vb) in zip(nnx.to_flat_state(nnx.state(model, nnx.Param)),
                                  nnx.to_flat_state(nnx.state(again, nnx.Param))):
        assert pa == pb and np.array_equal(np.asarray(va.value), np.asarray(vb.value))
    # transformers loads the export with no missing or unexpected keys and computes the same.
    hf_cls = KINDS[case[0]][1]
    reloaded, info = hf_cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    states, _ = _torch_states(reloaded.eval(), inputs[0])
    assert max(_max_errors(model(inputs[0]), states)) < 1e-4


def test_task_checkpoint_strips_prefix_and_drops_heads(tmp_path, inputs):
    torch.manual_seed(0)
    ctc = _perturb(transformers.Wav2Vec2ForCTC(_config("wav2vec2", "layer", True, vocab_size=12)))
    ctc.save_pretrained(tmp_path, safe_serialization=True)
    states, _ = _torch_states(ctc.wav2vec2, inputs[0])
    assert max(_max_errors(load_hf_audio_encoder(tmp_path)(inputs[0]), states)) < 1e-4


def test_wavlm_pretraining_style_heads_are_dropped(tmp_path, inputs):
    torch.manual_seed(1)
    model = _perturb(transformers.WavLMForSequenceClassification(_config("wavlm", "group", False, num_labels=3)))
    model.save_pretrained(tmp_path, safe_serialization=True)
    states, _ = _torch_states(model.wavlm, inputs[0])
    assert max(_max_errors(load_hf_audio_encoder(tmp_path)(inputs[0]), states)) < 1e-4


def _corrupt(folder, dest, edit):
    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    shutil.copy(folder / "config.json", dest / "config.json")
    save_file(tensors, str(dest / "model.safetensors"))


def test_renamed_tensor_is_named(checkpoints, tmp_path):
    folder, _ = checkpoints[("wav2vec2", "layer", False)]
    key = "encoder.layers.1.attention.q_proj.weight"
    _corrupt(folder, tmp_path, lambda t: t.__setitem__(key.replace("q_proj", "query"), t.pop(key)))
    with pytest.raises(ConversionError) as err:
        load_hf_audio_encoder(tmp_path)
    assert "encoder.layers.1.attention.query.weight" in str(err.value)
    assert "encoder.layers.1.attention.q_proj.kernel" in str(err.value)  # the parameter left without a value


def test_resized_tensor_is_named(checkpoints, tmp_path):
    folder, _ = checkpoints[("wavlm", "group", True)]
    key = "encoder.layers.0.feed_forward.intermediate_dense.weight"
    _corrupt(folder, tmp_path, lambda t: t.__setitem__(key, np.zeros((65, 32), np.float32)))
    with pytest.raises(ConversionError, match="intermediate_dense.weight"):
        load_hf_audio_encoder(tmp_path)


def test_other_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "hubert"}))
    with pytest.raises(ConversionError, match="model_type='hubert'"):
        load_hf_audio_encoder(tmp_path)
