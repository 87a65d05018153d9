"""Stages built by keyword, and rematerialisation as a wrapper that keeps parameter paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from emotivetalk_jax.train.state import rematerialise


class _Block(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(3, 3, rngs=rngs)

    def __call__(self, x, scale=1.0):
        return jnp.tanh(self.lin(x)) * scale


class _Net(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(0)
        self.blocks = nnx.List([_Block(rngs), _Block(rngs)])
        self.out = nnx.Linear(3, 1, rngs=rngs)

    def __call__(self, x):
        for b in self.blocks:
            x = b(x, scale=2.0)
        return self.out(x).sum()


def test_remat_wrapper_keeps_paths_values_and_gradients():
    net = _Net()
    wrapped, n = rematerialise(net, ["_Block"])
    assert n == 2
    assert [type(b).__name__ for b in wrapped.blocks] == ["Remat_Block", "Remat_Block"]
    assert [type(b).__name__ for b in net.blocks] == ["_Block", "_Block"]  # the input is left as it is
    plain, remat = nnx.state(net).to_pure_dict(), nnx.state(wrapped).to_pure_dict()
    assert jax.tree.structure(plain) == jax.tree.structure(remat)
    x = jnp.arange(6.0).reshape(2, 3) / 6

    def grads(model):
        graphdef, state = nnx.split(model)
        return jax.grad(lambda s: nnx.merge(graphdef, s)(x))(state).to_pure_dict()

    jaxpr = str(jax.make_jaxpr(lambda s: nnx.merge(nnx.graphdef(wrapped), s)(x))(nnx.state(wrapped)))
    assert "remat" in jaxpr or "checkpoint" in jaxpr
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), grads(net), grads(wrapped))
    assert rematerialise(net, []) == (net, 0)


def test_stage_is_built_by_keyword_and_unknown_stage_names_the_choices():
    from configs.train import get_config
    from emotivetalk_jax.train.stages import STAGES, Stage, build_stage

    with pytest.raises(TypeError):
        Stage("encoders", None, ("main",), {}, {}, None, {}, {}, None, {})  # positional: refused
    cfg = get_config("stage=encoders,variant=tiny")
    cfg.remat = "blocks"
    stage = build_stage(cfg, abstract=True)
    assert stage.name == "encoders" and stage.groups == ("main",)
    assert isinstance(jax.tree.leaves(stage.init_params)[0], jax.ShapeDtypeStruct)
    cfg.stage = "encoder"
    with pytest.raises(ValueError, match="choose one of " + ", ".join(STAGES)):
        build_stage(cfg)
