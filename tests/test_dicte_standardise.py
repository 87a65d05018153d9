"""Di-CTE's standardised e_v (`DiCTEConfig.standardise`): the model's space is
z = (e - mean) / scale; losses, samplers and the stage-1 calibration convert at the edges."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from emotivetalk_jax import losses
from emotivetalk_jax.diffusion.dicte import sample_dicte
from emotivetalk_jax.models.dicte import DataStat, DiCTE, DiCTECond
from emotivetalk_jax.models.vaid import STAGE1_MAIN, VAID
from emotivetalk_jax.models.vaid_variants import DEMO, TINY
from emotivetalk_jax.train.state import host_init

E = TINY.dicte.expr_dim
MEAN = jnp.linspace(-3.0, 4.0, E)
SCALE = jnp.linspace(0.5, 7.0, E)


def _dicte(standardise=True) -> DiCTE:
    cfg = dataclasses.replace(TINY.dicte, standardise=standardise)
    model = host_init(nnx.eval_shape(lambda: DiCTE(cfg, rngs=nnx.Rngs(0))), 3)
    if standardise:
        model.stats.mean[...] = MEAN
        model.stats.scale[...] = SCALE
    return model


def _cond(b=2, f=6, e_cond=None):
    w = 2 * TINY.dicte.window_half_width + 1
    audio = jax.random.normal(jax.random.key(1), (b, f, w, TINY.dicte.audio_dim))
    portrait = jax.random.uniform(jax.random.key(2), (b, 16, 16, 3), minval=-1, maxval=1)
    return DiCTECond(audio, portrait, jnp.zeros((b, E)) if e_cond is None else e_cond)


def test_host_init_gives_the_identity_statistics_and_round_trip():
    cfg = dataclasses.replace(TINY.dicte, standardise=True)
    fresh = host_init(nnx.eval_shape(lambda: DiCTE(cfg, rngs=nnx.Rngs(0))), 3)
    np.testing.assert_array_equal(fresh.stats.mean[...], np.zeros(E))
    np.testing.assert_array_equal(fresh.stats.scale[...], np.ones(E))
    model = _dicte()
    e = jax.random.normal(jax.random.key(0), (2, 5, E)) * 5 + 1
    z = model.standardise(e)
    np.testing.assert_allclose(z, (e - MEAN) / SCALE, rtol=1e-6)
    np.testing.assert_allclose(model.destandardise(z), e, rtol=1e-5, atol=1e-5)
    plain = _dicte(standardise=False)
    assert plain.standardise(e) is e and not hasattr(plain, "stats")


def test_the_model_sees_e_cond_standardised():
    """A standardising model given e_cond equals the plain model (same weights) given
    (e_cond - mean) / scale."""
    std, plain = _dicte(), _dicte(standardise=False)
    nnx.update(plain, nnx.state(std, nnx.Not(DataStat)))
    e_cond = 3 * jax.random.normal(jax.random.key(4), (2, E)) + 2
    x = jax.random.normal(jax.random.key(5), (2, 6, E))
    t = jnp.array([0.3, 0.8])
    np.testing.assert_allclose(std(x, t, _cond(e_cond=e_cond)),
                               plain(x, t, _cond(e_cond=(e_cond - MEAN) / SCALE)), rtol=1e-5, atol=1e-5)


class _Oracle(nnx.Module):
    """Predicts a fixed clean z plus the mean of the clean prefix frames it is given (so the
    output shows what the prefix was); Di-CTE's edges."""

    def __init__(self, z0):
        self.z0 = nnx.Variable(z0)

    def standardise(self, e):
        return (e - MEAN) / SCALE

    def destandardise(self, z):
        return z * SCALE + MEAN

    def __call__(self, x, t, cond, clean):
        c = clean[..., None].astype(x.dtype)
        return self.z0[...] + jnp.sum(x * c, axis=1, keepdims=True) / jnp.sum(c, axis=1, keepdims=True)


def test_sampler_returns_e_v_units_and_feeds_the_prefix_standardised():
    z0 = jax.random.normal(jax.random.key(6), (2, 6, E))
    prefix = 4 * jax.random.normal(jax.random.key(7), (2, 2, E)) + 1
    out = sample_dicte(_Oracle(z0), _cond(), 4, jax.random.key(8), steps=3, prefix=prefix)
    seen = jnp.mean((prefix - MEAN) / SCALE, axis=1, keepdims=True)
    np.testing.assert_allclose(out, (z0[:, 2:] + seen) * SCALE + MEAN, rtol=1e-5, atol=1e-5)


def test_loss_is_in_the_standardised_space():
    model = _dicte()
    x0 = jax.random.normal(jax.random.key(9), (2, 6, E)) * SCALE + MEAN
    pred, target, w = losses.dicte_denoise(model, x0, _cond(), jax.random.key(10), prefix_frames=2)
    np.testing.assert_allclose(target, (x0 - MEAN) / SCALE, rtol=1e-5, atol=1e-5)
    assert pred.shape == target.shape and w.shape == (2, 6)
    # a loss in e_v's units would be about SCALE**2 times larger; in z it is O(1)
    assert float(losses.weighted_mse(pred, target, w)) < 20.0


def test_stage1_trains_no_statistic_and_calibrate_sets_them():
    from configs.train import get_config
    from emotivetalk_jax.train.stages import build_stage
    from emotivetalk_jax.train.stages.common import to_float_image

    vaid = nnx.eval_shape(lambda: VAID(DEMO, rngs=nnx.Rngs(0)))
    trained = jax.tree_util.tree_leaves_with_path(nnx.state(vaid, STAGE1_MAIN))
    assert trained and not any("stats" in jax.tree_util.keystr(p) for p, _ in trained)

    cfg = get_config("stage=vaid,variant=demo")
    stage = build_stage(cfg)
    assert "stats" in stage.init_rest["dicte"]
    frames = np.random.default_rng(0).integers(0, 256, (2, 3, 64, 64, 3), dtype=np.uint8)
    rest = stage.calibrate(stage.init_rest, stage.frozen_state, [{"frames": frames}, {"frames": frames[::-1]}])
    face = nnx.merge(stage.frozen_graphdef, stage.frozen_state).face
    e = np.asarray(face.encode_expression(to_float_image(frames.reshape(-1, 64, 64, 3))))
    e = np.concatenate([e, e])
    np.testing.assert_allclose(rest["dicte"]["stats"]["mean"], e.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rest["dicte"]["stats"]["scale"], e.std(0), rtol=1e-4, atol=1e-6)
    assert build_stage(get_config("stage=vaid,variant=tiny"), abstract=True).calibrate is None
    retrain = get_config("stage=vaid,variant=demo")
    retrain.vaid_train, retrain.init.vaid = "dicte", "/nonexistent/stage1"  # abstract: not read
    assert build_stage(retrain, abstract=True).calibrate is None  # keeps the loaded statistics
