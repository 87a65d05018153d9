"""Known-answer tests of the V-AID and encoder-pretraining losses (emotivetalk_jax.losses)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from emotivetalk_jax import losses
from emotivetalk_jax.models.club import CLUB
from emotivetalk_jax.diffusion.dicte import sample_dicte
from emotivetalk_jax.diffusion.long_dicte import generate_expression
from emotivetalk_jax.models.dicte import DiCTECond
from emotivetalk_jax.models.vaid_variants import CLUBConfig


def _keys(n: int, seed: int = 0):
    return jax.random.split(jax.random.key(seed), n)


# ---------------------------------------------------------------------------- InfoNCE / lip


def test_info_nce_aligned_pairs_near_zero():
    a = jax.random.normal(_keys(1)[0], (64, 1024))
    b = a + 0.05 * jax.random.normal(_keys(2)[1], a.shape)
    value = float(losses.info_nce(a, b, tau=0.1))
    assert 0 <= value < 0.01, value


def test_info_nce_unrelated_pairs_near_log_n():
    k1, k2 = _keys(2)
    a, b = jax.random.normal(k1, (64, 1024)), jax.random.normal(k2, (64, 1024))
    value = float(losses.info_nce(a, b, tau=0.1))
    assert abs(value - np.log(64)) < 0.03 * np.log(64), (value, np.log(64))
    # Any pairing at a large temperature is uninformative: exactly log N in the limit.
    assert abs(float(losses.info_nce(a, a[::-1], tau=1e4)) - np.log(64)) < 1e-3


def test_lip_loss_is_alpha_nce_plus_beta_mse_per_clip():
    k1, k2 = _keys(2)
    l_v = jax.random.normal(k1, (3, 10, 16))
    l_a = l_v + 0.3 * jax.random.normal(k2, l_v.shape)
    nce = np.mean([float(losses.info_nce(l_a[i], l_v[i], 0.07)) for i in range(3)])
    mse = float(jnp.mean((l_a - l_v) ** 2))
    got = float(losses.lip_loss(l_a, l_v, alpha=0.5, beta=2.0, tau=0.07))
    np.testing.assert_allclose(got, 0.5 * nce + 2.0 * mse, rtol=1e-5)


# ---------------------------------------------------------------------------- CLUB


def _gaussian_pairs(key, n: int, d: int, rho: float):
    k1, k2 = jax.random.split(key)
    l = jax.random.normal(k1, (n, d))
    return l, rho * l + np.sqrt(1 - rho**2) * jax.random.normal(k2, (n, d))


def test_club_negative_term_matches_all_pairs():
    l, e = _gaussian_pairs(_keys(1)[0], 300, 3, 0.6)
    q = lambda x: (0.6 * x + 0.1, jnp.full_like(x, -0.4) + 0.05 * x)
    mu, logvar = q(l)
    pos = -0.5 * (mu - e) ** 2 / jnp.exp(logvar)
    neg = jnp.mean(-0.5 * (e[None] - mu[:, None]) ** 2 / jnp.exp(logvar)[:, None], axis=1)
    np.testing.assert_allclose(losses.club_upper_bound(q, l, e), jnp.mean(jnp.sum(pos - neg, -1)), rtol=1e-4)


def test_club_trained_on_correlated_gaussians():
    """q trained by its NLL on jointly Gaussian (l, e), unit variances, correlation rho per dim.

    True MI = -d/2 log(1 - rho^2). With q exact, q's plug-in estimate H(e) - NLL equals the
    true MI, while CLUB equals d rho^2 / (1 - rho^2): an upper bound that is NOT tight for
    Gaussians (its gap is E_p(e)[log p(e) - E_p(l) log p(e|l)] > 0). We check both.
    """
    d, rho = 4, 0.5
    true_mi = -0.5 * d * np.log(1 - rho**2)
    club_exact = d * rho**2 / (1 - rho**2)
    q = CLUB(CLUBConfig(lip_dim=d, expr_dim=d, hidden=64), rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(q, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def train(q, opt, key):
        def step(carry, k):
            q, opt = carry
            l, e = _gaussian_pairs(k, 512, d, rho)
            loss, grads = nnx.value_and_grad(losses.club_q_loss)(q, l, e)
            opt.update(q, grads)
            return (q, opt), loss

        (q, opt), _ = nnx.scan(step, in_axes=(nnx.Carry, 0))((q, opt), jax.random.split(key, 600))

    train(q, opt, _keys(1, seed=1)[0])
    l, e = _gaussian_pairs(_keys(1, seed=2)[0], 20000, d, rho)
    club = float(losses.club_upper_bound(q, l, e))
    plug_in = 0.5 * d * np.log(2 * np.pi * np.e) - float(losses.club_q_loss(q, l, e))
    print(f"CLUB {club:.4f} (closed form {club_exact:.4f}); plug-in MI {plug_in:.4f} (true {true_mi:.4f})")
    assert abs(club - club_exact) < 0.1 * club_exact
    assert club > true_mi
    assert abs(plug_in - true_mi) < 0.1 * true_mi


def test_club_q_loss_updates_q_only():
    q = CLUB(CLUBConfig(lip_dim=3, expr_dim=2, hidden=8), rngs=nnx.Rngs(0))
    l, e = jax.random.normal(_keys(1)[0], (5, 3)), jax.random.normal(_keys(2)[1], (5, 2))
    gl, ge = jax.grad(lambda l, e: losses.club_q_loss(q, l, e), argnums=(0, 1))(l, e)
    assert not jnp.any(gl) and not jnp.any(ge)
    gu = jax.grad(lambda l: losses.club_upper_bound(q, l, e))(l)
    assert jnp.any(gu)


# ---------------------------------------------------------------------------- Di-CTE


def _cond(b=2, f=12, w=3, da=4, e=3, seed=0):
    k1, k2, k3 = _keys(3, seed)
    return DiCTECond(jax.random.normal(k1, (b, f, w, da)), jax.random.normal(k2, (b, 8, 8, 3)),
                     jax.random.normal(k3, (b, e)))


def test_dicte_loss_zero_for_perfect_denoiser():
    cond = _cond()
    x0 = jax.random.normal(_keys(1, 5)[0], (2, 12, 3))
    perfect = lambda x_t, t, c, clean: x0
    assert float(losses.dicte_loss(perfect, x0, cond, _keys(1)[0], prefix_frames=4)) == 0.0
    blind = lambda x_t, t, c, clean: jnp.zeros_like(x_t)
    assert float(losses.dicte_loss(blind, x0, cond, _keys(1)[0], prefix_frames=4)) > 0.1


def test_dicte_prefix_is_clean_and_unweighted():
    cond = _cond()
    x0 = jax.random.normal(_keys(1, 5)[0], (2, 12, 3))
    seen = {}

    def spy(x_t, t, c, clean):
        seen.update(x_t=x_t, clean=clean)
        return x_t

    _, _, w = losses.dicte_denoise(spy, x0, cond, _keys(1)[0], prefix_frames=4, prefix_ratio=1.0)
    np.testing.assert_array_equal(seen["clean"], np.arange(12)[None].repeat(2, 0) < 4)
    np.testing.assert_array_equal(seen["x_t"][:, :4], x0[:, :4])
    np.testing.assert_array_equal(w, 1.0 - seen["clean"])
    _, _, w = losses.dicte_denoise(spy, x0, cond, _keys(1)[0], prefix_frames=4, prefix_ratio=0.0)
    assert not seen["clean"].any() and np.all(w == 1)


def test_ddim_with_an_oracle_returns_the_target_and_keeps_the_prefix():
    cond = _cond(f=10)
    target = jax.random.normal(_keys(1, 7)[0], (2, 10, 3))
    oracle = lambda x, t, c, clean: target
    out = sample_dicte(oracle, cond, 6, _keys(1)[0], steps=5, prefix=target[:, :4])
    np.testing.assert_allclose(out, target[:, 4:], atol=1e-5)


def test_long_generation_chains_prefixes():
    """Each chunk's new frames = (last clean prefix value) + 1, so chunk k gives k + 1."""
    def oracle(x, t, c, clean):
        p = jnp.sum(clean[0])
        last = jnp.where(p > 0, x[:, jnp.maximum(p - 1, 0)], 0.0)
        return jnp.broadcast_to(last[:, None] + 1.0, x.shape)

    cond = _cond(f=26)
    out = generate_expression(oracle, cond, _keys(1)[0], steps=3, chunk=10, prefix_frames=4)
    expected = np.concatenate([np.full(10, 1.0), np.full(6, 2.0), np.full(6, 3.0), np.full(4, 4.0)])
    np.testing.assert_allclose(out[0, :, 0], expected, atol=1e-5)


# ---------------------------------------------------------------------------- encoder pretraining


def _masks(b=3, h=16):
    lip = jnp.zeros((b, h, h, 1)).at[:, 10:14, 5:11].set(1.0)
    face = jnp.zeros((b, h, h, 1)).at[:, 2:15, 3:13].set(1.0)
    return lip, face


def test_reconstruction_masks_select_regions():
    lip, face = _masks()
    configs = jnp.array([losses.DROP_LIP, losses.DROP_EXPRESSION, losses.USE_BOTH])
    target = jnp.zeros((3, 16, 16, 3))
    inside_lip = target + lip  # error only in the lip box
    outside_face = target + (1 - face)  # error only off the face
    per = lambda pred, i: float(losses.masked_reconstruction_loss(pred[i:i + 1], target[i:i + 1], configs[i:i + 1],
                                                                  lip[i:i + 1], face[i:i + 1]))
    assert per(inside_lip, 0) == 0.0  # drop lip: lips are not supervised
    assert per(inside_lip, 1) == 1.0  # drop expression: only the lips, every lip pixel wrong
    assert per(outside_face, 0) == 0.0 and per(outside_face, 1) == 0.0
    assert per(outside_face, 2) == pytest.approx(float(jnp.mean(1 - face[0])))
    assert float(losses.masked_reconstruction_loss(target + 1, target, configs, lip, face)) == pytest.approx(1.0)


def test_dropout_configs_and_keep_flags():
    c = losses.sample_dropout_configs(_keys(1)[0], 3000)
    counts = np.bincount(np.asarray(c), minlength=3) / 3000
    np.testing.assert_allclose(counts, 1 / 3, atol=0.04)
    keep_lip, keep_expr = losses.dropout_keep(jnp.array([0, 1, 2]))
    np.testing.assert_array_equal(keep_lip, [False, True, True])
    np.testing.assert_array_equal(keep_expr, [True, False, True])


def test_emotion_label_loss_known_answer():
    """Cross-entropy over the labelled rows only: log 4 for uniform logits, 0 with no labels."""
    logits = jnp.array([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0]])
    expect = (np.log(4) + (np.log(np.exp(10.0) + 3) - 0.0)) / 2  # row 0 label 2, row 1 label 1
    np.testing.assert_allclose(losses.emotion_label_loss(logits, jnp.array([2, 1, -1])), expect, rtol=1e-6)
    assert float(losses.emotion_label_loss(logits, jnp.array([-1, -1, -1]))) == 0.0


def test_landmark_mouth_opening_known_answer_and_synthetic_truth():
    """Inner-lip gap over the eye-corner distance: 3 / 30 by hand; and on synthetic frames it
    tracks the rendered opening (r > 0.99)."""
    from emotivetalk_jax.data import synthetic_face as sf
    from emotivetalk_jax.data.synthetic import SynthConfig, SyntheticDomain

    lm = np.zeros((68, 2), np.float32)
    lm[36], lm[45], lm[62], lm[66] = (10, 20), (40, 20), (25, 40), (25, 43)
    np.testing.assert_allclose(losses.landmark_mouth_opening(jnp.asarray(lm)), 0.1, rtol=1e-6)
    np.testing.assert_allclose(losses.lip_opening_loss(jnp.array([1.0]), jnp.asarray(lm)[None]), 0.0, atol=1e-10)
    clip = SyntheticDomain(0, SynthConfig(head_motion=0.0)).clip(0)
    got = losses.landmark_mouth_opening(jnp.asarray(np.stack([sf.landmarks(clip.identity, s, 64) for s in clip.states])))
    assert np.corrcoef(np.asarray(got), clip.states[:, 0])[0, 1] > 0.99
