"""The strict conversion engine and the safetensors I/O, on a toy model (no torch)."""

import json

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from emotivetalk_jax.convert import io
from emotivetalk_jax.convert.engine import (
    COMMON_RULES,
    KERNEL,
    ConversionError,
    Rule,
    abstract_model,
    count_params,
    export_tensors,
    load_into,
    map_key,
)


class Toy(nnx.Module):
    def __init__(self, rngs):
        self.blocks = nnx.List([nnx.Linear(3, 4, rngs=rngs), nnx.Conv(4, 5, (3, 3), rngs=rngs)])
        self.norm_out = nnx.LayerNorm(5, rngs=rngs)
        self.conv3d = nnx.Conv(5, 2, (3, 1, 1), rngs=rngs)
        self.mix_factor = nnx.Param(np.zeros((1,), np.float32))


RULES = (Rule("*.mix_factor", "*.mix_factor"), Rule("head.*", None)) + COMMON_RULES


def torch_like_state(seed=0):
    r = np.random.default_rng(seed)
    f = lambda *s: r.standard_normal(s).astype(np.float32)
    return {
        "blocks.0.weight": f(4, 3),
        "blocks.0.bias": f(4),
        "blocks.1.weight": f(5, 4, 3, 3),
        "blocks.1.bias": f(5),
        "norm_out.weight": f(5),
        "norm_out.bias": f(5),
        "conv3d.weight": f(2, 5, 3, 1, 1),
        "conv3d.bias": f(2),
        "mix_factor": f(1),
    }


def toy():
    return abstract_model(lambda: Toy(nnx.Rngs(0)))


def test_pattern_language():
    assert map_key(COMMON_RULES, "down_blocks.0.resnets.1.norm1.weight") == "down_blocks.0.resnets.1.norm1.scale"
    assert map_key(COMMON_RULES, "conv_norm_out.weight") == "conv_norm_out.scale"  # top level
    assert map_key(COMMON_RULES, "bias") == "bias"
    assert map_key(COMMON_RULES, "a.to_out.0.weight") == "a.to_out.0.kernel"
    assert map_key(COMMON_RULES, "a.running_mean") is None
    with pytest.raises(ValueError, match="wildcards"):
        Rule("*.x.#", "*.y")


def test_kernel_layouts_round_trip():
    r = np.random.default_rng(1)
    for shape, want in [((4, 3), (3, 4)), ((6, 2, 5), (5, 2, 6)), ((5, 4, 3, 2), (3, 2, 4, 5)), ((2, 5, 3, 1, 1), (3, 1, 1, 5, 2))]:
        a = r.standard_normal(shape)
        assert KERNEL.forward(a).shape == want
        np.testing.assert_array_equal(KERNEL.inverse(KERNEL.forward(a)), a)
    w = r.standard_normal((5, 4, 3, 2))
    assert KERNEL.forward(w)[2, 1, 3, 4] == w[4, 3, 2, 1]  # OIHW -> HWIO


def test_load_and_export_round_trip():
    sd = torch_like_state()
    model = load_into(toy(), {**sd, "head.weight": np.ones(3, np.float32)}, RULES)
    assert count_params(model) == sum(v.size for v in sd.values())
    np.testing.assert_array_equal(model.blocks[0].kernel.value, sd["blocks.0.weight"].T)
    np.testing.assert_array_equal(model.norm_out.scale.value, sd["norm_out.weight"])
    out = export_tensors(model, RULES)
    assert set(out) == set(sd)  # dropped head is not exported
    for k in sd:
        np.testing.assert_array_equal(out[k], sd[k])
    again = export_tensors(load_into(toy(), out, RULES), RULES)
    assert all(np.array_equal(again[k], out[k]) for k in out)


def test_dtype_cast():
    import jax.numpy as jnp

    model = load_into(toy(), torch_like_state(), RULES, dtype=jnp.bfloat16)
    assert model.blocks[1].kernel.value.dtype == jnp.bfloat16


def test_strictness_names_every_problem():
    sd = torch_like_state()
    sd["blocks.1.weight"] = sd["blocks.1.weight"][:, :3]  # resized
    sd["blocks.0.kernel_typo"] = sd.pop("blocks.0.weight")  # renamed: unmapped
    sd["extra.weight"] = np.zeros((2, 2), np.float32)  # maps nowhere
    del sd["conv3d.bias"]  # missing
    with pytest.raises(ConversionError) as e:
        load_into(toy(), sd, RULES, what="toy.safetensors")
    msg = str(e.value)
    assert "\n" not in msg
    for needle in ["blocks.0.kernel_typo", "extra.weight -> extra.kernel", "blocks.1.weight (5, 3, 3, 3)", "conv3d.bias", "blocks.0.kernel", "toy.safetensors"]:
        assert needle in msg, needle
    assert "missing from the checkpoint: blocks.0.bias" not in msg  # present, and
    assert msg.count("blocks.1.kernel") == 1  # a resized tensor is reported once, not also as missing


def test_export_needs_a_rule():
    model = load_into(toy(), torch_like_state(), RULES)
    with pytest.raises(ConversionError, match="mix_factor"):
        export_tensors(model, COMMON_RULES)


def _component(tmp_path, tensors, config=None, stem="diffusion_pytorch_model"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config or {"_class_name": "Toy"}))
    save_file(tensors, str(tmp_path / f"{stem}.safetensors"))
    return tmp_path


def test_io_reads_single_and_sharded(tmp_path):
    sd = torch_like_state()
    folder = _component(tmp_path / "single", sd)
    got = io.read_weights(io.resolve_component(folder, None, "x"), "diffusion_pytorch_model")
    assert set(got) == set(sd)
    # Sharded: two files and an index, found through the repo root + subfolder.
    sharded = tmp_path / "repo" / "unet"
    sharded.mkdir(parents=True)
    (sharded / "config.json").write_text("{}")
    keys = sorted(sd)
    parts = {"a.safetensors": keys[:4], "b.safetensors": keys[4:]}
    for name, ks in parts.items():
        save_file({k: sd[k] for k in ks}, str(sharded / name))
    index = {"weight_map": {k: n for n, ks in parts.items() for k in ks}}
    (sharded / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    folder = io.resolve_component(tmp_path / "repo", "unet", "diffusion_pytorch_model")
    got = io.read_weights(folder, "diffusion_pytorch_model")
    assert all(np.array_equal(got[k], sd[k]) for k in sd)
    (sharded / "b.safetensors").unlink()
    with pytest.raises(ConversionError, match="shard b.safetensors"):
        io.read_weights(folder, "diffusion_pytorch_model")


def test_io_bad_inputs(tmp_path):
    folder = _component(tmp_path / "c", torch_like_state())
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-50])  # truncated
    with pytest.raises(ConversionError, match="truncated"):
        io.read_weights(folder, "diffusion_pytorch_model")
    with pytest.raises(ConversionError, match="no config.json"):
        io.resolve_component(tmp_path, "unet", "diffusion_pytorch_model")
    with pytest.raises(ConversionError, match="does not exist"):
        io.resolve_component(tmp_path / "nope", "unet", "diffusion_pytorch_model")
    with pytest.raises(ConversionError, match="describes a Toy, not a UNetSpatioTemporalConditionModel"):
        io.check_class(io.read_config(folder), ("UNetSpatioTemporalConditionModel",), folder)
    # A pickle is refused, never opened.
    pick = tmp_path / "pickled"
    pick.mkdir()
    (pick / "config.json").write_text("{}")
    (pick / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ConversionError, match="pickles can run code"):
        io.read_weights(pick, "diffusion_pytorch_model")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ConversionError, match="not valid JSON"):
        io.read_config(folder)


def test_write_component_round_trip(tmp_path):
    sd = torch_like_state()
    io.write_component(tmp_path / "out", {"a": 1}, sd, "model")
    assert io.read_config(tmp_path / "out") == {"a": 1}
    got = io.read_weights(tmp_path / "out", "model")
    assert all(np.array_equal(got[k], sd[k]) for k in sd)
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_random_params_fills_every_parameter():
    from emotivetalk_jax.convert.engine import abstract_params, random_params

    model = random_params(toy(), seed=1)
    shapes = abstract_params(toy())
    got = {k: v for k, v in abstract_params(model).items()}
    assert got == shapes
    k = np.asarray(model.blocks[1].kernel.value)
    assert np.isfinite(k).all() and 0.05 < k.std() * np.sqrt(36) < 2  # ~N(0, 1/fan_in)
    assert not np.array_equal(k, np.asarray(random_params(toy(), seed=2).blocks[1].kernel.value))
