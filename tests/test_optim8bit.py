"""8-bit Adam: block-wise quantised moments, state size and convergence against fp32 Adam."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from emotivetalk_jax.train.optim import (QTensor, adam_8bit, dequantize, dynamic_code, quantize, quantized_zeros,
                                         state_bytes)


def test_code_is_bitsandbytes_dynamic_map():
    signed, unsigned = dynamic_code(True), dynamic_code(False)
    assert len(np.unique(signed)) == 256 and len(np.unique(unsigned)) == 256
    assert signed.max() == 1.0 and 0.0 in signed and unsigned.min() == 0.0 and unsigned.max() == 1.0
    # smallest non-zero magnitudes: 0.55e-6 (signed), 0.325e-6 (unsigned)
    np.testing.assert_allclose(np.min(np.abs(signed[signed != 0])), 0.55e-6, rtol=1e-5)
    np.testing.assert_allclose(np.min(unsigned[unsigned > 0]), 0.325e-6, rtol=1e-5)


@pytest.mark.parametrize("signed", [True, False])
def test_quantize_picks_the_nearest_code(signed):
    code = jnp.asarray(dynamic_code(signed))
    y = jnp.linspace(-1 if signed else 0, 1, 4097)
    q = quantize(y, 4097, signed)
    assert q.q.dtype == jnp.uint8 and q.q.shape == y.shape and q.scale.shape == (1,)
    got = dequantize(q, 4097, signed)
    nearest = code[jnp.argmin(jnp.abs(y[:, None] - code[None]), axis=1)]
    # nearest code value, up to ties at group edges (one code step)
    assert float(jnp.max(jnp.abs(got - y))) <= float(jnp.max(jnp.abs(nearest - y))) + 1e-6


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("shape", [(3, 5), (256,), (7, 300)])
def test_quantized_zeros_equal_quantizing_zeros(shape, signed):
    want = quantize(jnp.zeros(shape, jnp.float32), 256, signed)
    got = quantized_zeros(shape, 256, signed)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_blocks_keep_shape_and_scale_per_block():
    x = jax.random.normal(jax.random.key(0), (3, 100)) * jnp.array([1e-3, 1.0, 1e3])[:, None]
    q = quantize(x, 100, True)
    assert q.q.shape == x.shape and q.scale.shape == (3,)
    np.testing.assert_allclose(q.scale, jnp.max(jnp.abs(x), axis=1))
    rel = jnp.abs(dequantize(q, 100, True) - x) / jnp.max(jnp.abs(x), axis=1, keepdims=True)
    assert float(jnp.max(rel)) < 0.01


def _tiny_ethd_params():
    from emotivetalk_jax.models.ethd import ETHD
    from emotivetalk_jax.models.ethd_variants import TINY

    model = nnx.eval_shape(lambda: ETHD.from_svd_config(dict(TINY.svd.unet), TINY.ethd, rngs=nnx.Rngs(0)))
    return nnx.state(model, nnx.Param).to_pure_dict()


def test_state_at_least_3_5x_smaller_on_tiny_ethd():
    params = _tiny_ethd_params()
    fp32 = state_bytes(jax.eval_shape(optax.adam(1e-5).init, params))
    eight = state_bytes(jax.eval_shape(adam_8bit(1e-5, min_8bit_size=1024).init, params))  # configs/train.py default
    ratio = fp32 / eight
    print(f"tiny ETHD Adam state: fp32 {fp32} B, 8-bit {eight} B, ratio {ratio:.2f}")
    assert ratio >= 3.5, ratio


def _regression():
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(k1, (512, 64))
    y = jnp.tanh(x @ jax.random.normal(k2, (64, 128)))
    a, b = jax.random.split(k3)
    params = dict(w1=jax.random.normal(a, (64, 256)) / 8, b1=jnp.zeros(256), w2=jax.random.normal(b, (256, 128)) / 16)

    def loss(p):
        return jnp.mean((jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] - y) ** 2)

    return params, loss


def _fit(tx, steps=400):
    params, loss = _regression()
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    for _ in range(steps):
        params, state = step(params, state)
    return float(loss(params)), state


def test_reaches_fp32_adam_loss_within_5_percent():
    ref, _ = _fit(optax.adam(3e-3))
    got, state = _fit(adam_8bit(3e-3, min_8bit_size=0))
    assert isinstance(state[0].mu["w1"], QTensor) and state[0].mu["w1"].q.dtype == jnp.uint8
    print(f"regression: fp32 Adam {ref:.5f}, 8-bit Adam {got:.5f}, gap {abs(got - ref) / ref:.2%}")
    assert abs(got - ref) / ref < 0.05, (ref, got)
    assert got < 0.2 * _regression()[1](_regression()[0])  # and it did learn
