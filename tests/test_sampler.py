"""The video sampler: DDIM vs diffusers, window fusion, length buckets, guidance, Di-CTE chunks.

Toy backbones keep compilation cheap; `_temporal` mixes frames inside its window (so a
window that touched padding, or a missing fusion, would show), `_framewise` does not (so
windowed sampling must equal whole-sequence sampling exactly).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emotivetalk_jax.diffusion import (
    Branches,
    Conditions,
    SamplerConfig,
    ddim_step,
    denoise,
    drop,
    init_noise_sigma,
    karras_sigmas,
    plan,
    sample,
)
from emotivetalk_jax.diffusion import sampler as sampler_lib
from emotivetalk_jax.diffusion.guidance import combine
from emotivetalk_jax.diffusion.long_dicte import chunk_schedule, sample_long

HW, C = 2, 4


def _temporal(xs, c_noise, lip, gain):
    """(B, T, H, W, 8) -> (B, T, H, W, 4), mixing every frame of the window (like temporal attention)."""
    h = jnp.tanh(0.7 * xs[..., :C] + 0.3 * xs[..., C:] + lip[:, :, None, None, :] * gain[:, None, None, None, None]
                 + 0.1 * c_noise[:, None, None, None, None])
    return h + 0.5 * jnp.mean(h, axis=1, keepdims=True) + 0.3 * jnp.roll(h, 1, axis=1)


def _framewise(xs, c_noise, lip, gain):
    return jnp.tanh(0.7 * xs[..., :C] + 0.3 * xs[..., C:] + lip[:, :, None, None, :] * gain[:, None, None, None, None]
                    + 0.1 * c_noise[:, None, None, None, None]) - 0.2 * xs[..., :C]


def _cond(n, seed=0, b=1):
    r = np.random.default_rng(seed)
    return Conditions(
        jnp.asarray(r.normal(size=(b, HW, HW, C)), jnp.float32),
        {"lip": jnp.asarray(r.normal(size=(b, n, C)), jnp.float32)},
        {"gain": jnp.asarray(1.0 + r.random(size=(b,)), jnp.float32)},
    )


def _noise(n, seed=1, b=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, n, HW, HW, C)), jnp.float32)


SMALL = SamplerConfig(steps=3, window=8, overlap=3)


def _plain_ddim(backbone, cond, noise, sigmas):
    """Reference: whole-sequence DDIM, eagerly, one denoiser call per step."""
    x = noise * jnp.sqrt(sigmas[0] ** 2 + 1)
    ref = jnp.broadcast_to(cond.reference[:, None], x.shape[:2] + cond.reference.shape[1:])
    f = lambda xs, cn: backbone(jnp.concatenate([xs, ref], -1), cn, **cond.frame, **cond.video)
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = ddim_step(x, denoise(f, x, s), s, s_next)
    return x


# ------------------------------------------------------------------ DDIM == diffusers Euler


@pytest.mark.torch
def test_ddim_trajectory_matches_diffusers_euler():
    import diffusers
    import torch
    # SVD's scheduler_config.json (stabilityai/stable-video-diffusion-img2vid-xt).
    sched = diffusers.EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", interpolation_type="linear", use_karras_sigmas=True,
        timestep_type="continuous", sigma_min=0.002, sigma_max=700.0, timestep_spacing="leading", steps_offset=1)
    sched.set_timesteps(25)
    np.testing.assert_array_equal(sched.sigmas.numpy(), np.asarray(karras_sigmas(25)))
    assert float(sched.init_noise_sigma) == pytest.approx(init_noise_sigma(), rel=1e-7)

    noise = _noise(6)
    latents = torch.from_numpy(np.array(noise)) * sched.init_noise_sigma
    ref_traj = []
    for t in sched.timesteps:  # t = c_noise = 0.25 ln sigma
        inp = sched.scale_model_input(latents, t)
        out = torch.tanh(0.8 * inp + 0.3 * t) - 0.2 * inp
        latents = sched.step(out, t, latents).prev_sample
        ref_traj.append(latents.numpy())

    toy = lambda xs, cn: jnp.tanh(0.8 * xs + 0.3 * cn[:, None, None, None, None]) - 0.2 * xs
    _, traj = sample(toy, Conditions(), jax.random.key(0), SamplerConfig(window=8, overlap=2), noise=noise,
                     return_trajectory=True)
    assert traj.shape == (25,) + noise.shape
    for i, (ours, ref) in enumerate(zip(np.asarray(traj), ref_traj)):
        # float32 on both sides: the error is a few ulps of the step's magnitude (up to ~2000 early on)
        err = np.abs(ours - ref).max()
        assert err <= 1e-5 * max(1.0, np.abs(ref).max()), (i, err)
    assert np.abs(np.asarray(traj[-1]) - ref_traj[-1]).max() < 1e-5


def test_ddim_step():
    x, x0 = jnp.full((3,), 5.0), jnp.full((3,), 1.0)
    np.testing.assert_allclose(ddim_step(x, x0, 2.0, 1.0), 3.0)
    np.testing.assert_allclose(ddim_step(x, x0, 2.0, 0.0), x0)
    z = jnp.asarray([0.3, -1.0, 2.0])
    np.testing.assert_allclose(ddim_step(x, x0, 2.0, 1.0, 0.0, z), 3.0)
    np.testing.assert_allclose(ddim_step(x, x0, 2.0, 0.0, 1.0, z), x0)  # last step is clean for any eta
    from emotivetalk_jax.diffusion import ancestral_sigmas
    down, up = ancestral_sigmas(2.0, 1.0, 0.7)
    assert float(down**2 + up**2) == pytest.approx(1.0)
    assert float(up) == pytest.approx(0.7 * np.sqrt(1 - 0.25))
    with pytest.raises(ValueError):
        ddim_step(x, x0, 2.0, 1.0, 0.5)


# ------------------------------------------------------------------ windows


@pytest.mark.parametrize("n", [5, 8])
def test_short_video_is_plain_ddim(n):
    cond, noise = _cond(n), _noise(n)
    ours = sample(_temporal, cond, jax.random.key(0), SMALL, noise=noise)
    ref = _plain_ddim(_temporal, cond, noise, SMALL.sigmas())
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_windows_have_no_seams_with_a_shift_equivariant_denoiser():
    n = 23
    cond, noise = _cond(n), _noise(n)
    whole = sample(_framewise, cond, jax.random.key(0), SamplerConfig(steps=3, window=32, overlap=0), noise=noise)
    for t, o, bw in [(8, 3, 1), (5, 0, 0), (12, 6, 2)]:
        windowed = sample(_framewise, cond, jax.random.key(0), SamplerConfig(steps=3, window=t, overlap=o,
                                                                             batch_windows=bw), noise=noise)
        np.testing.assert_allclose(windowed, whole, rtol=1e-5, atol=1e-5, err_msg=f"T={t} O={o}")
    # a temporally mixing denoiser does see the windows
    assert not np.allclose(sample(_temporal, cond, jax.random.key(0), SMALL, noise=noise),
                           sample(_temporal, cond, jax.random.key(0), SamplerConfig(steps=3, window=32), noise=noise))


def test_batched_and_scanned_windows_agree():
    n = 30
    cond, noise = _cond(n), _noise(n)
    scanned = sample(_temporal, cond, jax.random.key(0), SMALL, noise=noise)
    batched = sample(_temporal, cond, jax.random.key(0), SamplerConfig(steps=3, window=8, overlap=3, batch_windows=0),
                     noise=noise)
    np.testing.assert_allclose(batched, scanned, rtol=1e-5, atol=1e-5)


def test_padding_never_leaks_into_real_frames():
    n = 21
    cond = _cond(n)
    cfg = SamplerConfig(steps=3, window=8, overlap=2, eta=0.5)  # stochastic too: per-frame noise
    a = sample(_temporal, cond, jax.random.key(3), cfg)
    big = SamplerConfig(steps=3, window=8, overlap=2, eta=0.5, length_buckets=(60,))
    assert plan(n, big).padded > plan(n, cfg).padded > n
    b = sample(_temporal, cond, jax.random.key(3), big)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(a)) and a.shape == (1, n, HW, HW, C)


def test_all_lengths_run_and_a_bucket_compiles_once():
    cfg = SamplerConfig(steps=2, window=120, overlap=24)  # the 512 preset's windows
    for n in [1, 119, 120, 121, 2 * 120 - 24, 1500]:
        out = sample(_temporal, _cond(n), jax.random.key(n), cfg)
        assert out.shape == (1, n, HW, HW, C) and np.all(np.isfinite(out)), n
    cfg3 = SamplerConfig(steps=3, window=120, overlap=24)  # fresh config: nothing cached yet
    programs = sampler_lib.compiled_programs()
    sample(_temporal, _cond(1400), jax.random.key(0), cfg3)
    sample(_temporal, _cond(1500), jax.random.key(0), cfg3)
    assert sampler_lib.compiled_programs() - programs == 1
    sample(_temporal, _cond(2000), jax.random.key(0), cfg3)  # next bucket: a new program
    assert sampler_lib.compiled_programs() - programs == 2


def test_same_seed_same_video_and_eta_adds_noise():
    cond = _cond(12)
    a = sample(_temporal, cond, jax.random.key(0), SMALL)
    np.testing.assert_array_equal(a, sample(_temporal, cond, jax.random.key(0), SMALL))
    assert not np.allclose(a, sample(_temporal, cond, jax.random.key(1), SMALL))
    stochastic = SamplerConfig(steps=3, window=8, overlap=3, eta=1.0)
    assert not np.allclose(a, sample(_temporal, cond, jax.random.key(0), stochastic))


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_step_by_step_equals_one_program(eta):
    """The schedule run a step per call (as a caller driving its own loop would) gives the one
    program's result, eta > 0 included: each step draws its own noise, the same in both; and
    the one program reports every step to its callback."""
    cond, noise = _cond(12), _noise(12)
    cfg = SamplerConfig(steps=3, window=8, overlap=3, eta=eta)
    seen = []
    whole = sample(_temporal, cond, jax.random.key(5), cfg, noise=noise, callback=seen.append)
    assert seen == [0, 1, 2]
    sigmas = np.asarray(cfg.sigmas())
    x = noise * np.sqrt(sigmas[0] ** 2 + 1.0)
    for i in range(cfg.steps):
        scale = np.sqrt(sigmas[i] ** 2 + 1.0)
        x = sample(_temporal, cond, jax.random.key(5), cfg, noise=x / scale, sigmas=sigmas[i:i + 2], first_step=i)
    np.testing.assert_allclose(x, whole, rtol=1e-5, atol=1e-5)
    if eta:  # the per-step noise differs from step to step: a run that reuses step 0's draw differs
        y = noise * np.sqrt(sigmas[0] ** 2 + 1.0)
        for i in range(cfg.steps):
            y = sample(_temporal, cond, jax.random.key(5), cfg, noise=y / np.sqrt(sigmas[i] ** 2 + 1.0),
                       sigmas=sigmas[i:i + 2])
        assert not np.allclose(y, whole, atol=1e-3)


# ------------------------------------------------------------------ guidance


def _branches(n):
    cond = _cond(n)
    return Branches(cond, no_expr=drop(cond, "gain"), null=drop(cond, "gain", "lip", reference=True))


def test_guidance_scale_one_is_no_guidance():
    n = 14
    br, noise = _branches(n), _noise(n)
    plain = sample(_temporal, br.cond, jax.random.key(0), SMALL, noise=noise)
    for mode in ["dual", "joint"]:
        cfg = SamplerConfig(steps=3, window=8, overlap=3, guidance=mode, ramp=(0.2, 1.0))
        np.testing.assert_allclose(sample(_temporal, br, jax.random.key(0), cfg, noise=noise), plain,
                                   rtol=1e-5, atol=1e-5, err_msg=mode)


def test_guidance_with_identical_branches_is_identity():
    n = 14
    cond, noise = _cond(n), _noise(n)
    plain = sample(_temporal, cond, jax.random.key(0), SMALL, noise=noise)
    cfg = SamplerConfig(steps=3, window=8, overlap=3, lip_scale=2.5, expr_scale=4.0, ramp=(0.0, 1.0), ramp_over="video")
    guided = sample(_temporal, Branches(cond, cond, cond), jax.random.key(0), cfg, noise=noise)
    np.testing.assert_allclose(guided, plain, rtol=1e-5, atol=1e-5)
    # and real guidance changes the result
    assert not np.allclose(sample(_temporal, _branches(n), jax.random.key(0), cfg, noise=noise), plain, atol=1e-3)


def test_guidance_formula():
    r = np.random.default_rng(0)
    cond, no_expr, null = (jnp.asarray(r.normal(size=(5,))) for _ in range(3))
    np.testing.assert_allclose(combine(jnp.stack([cond, no_expr, null]), "dual", 1.0, 1.0), cond, rtol=1e-6)
    np.testing.assert_allclose(combine(jnp.stack([cond, no_expr, null]), "dual", 3.0, 3.0),
                               combine(jnp.stack([cond, null]), "joint", 3.0, 3.0), rtol=1e-6)
    np.testing.assert_allclose(combine(jnp.stack([cond, no_expr, null]), "dual", 2.0, 5.0),
                               null + 2.0 * (no_expr - null) + 5.0 * (cond - no_expr), rtol=1e-6)
    with pytest.raises(ValueError, match="no_expr"):
        sample(_temporal, Branches(_cond(4)), jax.random.key(0), SamplerConfig(lip_scale=2.0, expr_scale=3.0))


def test_expression_guidance_is_dual_with_lip_scale_one_without_the_null_branch():
    """lip_scale 1: D_null cancels in the dual formula, so "auto" runs two branches (cond,
    no_expr) and samples what forced "dual" samples; forcing it with lip_scale != 1 is refused."""
    from emotivetalk_jax.diffusion.guidance import guidance_mode

    r = np.random.default_rng(1)
    cond, no_expr, null = (jnp.asarray(r.normal(size=(5,))) for _ in range(3))
    np.testing.assert_allclose(combine(jnp.stack([cond, no_expr]), "expression", 1.0, 2.5),
                               combine(jnp.stack([cond, no_expr, null]), "dual", 1.0, 2.5), rtol=1e-6, atol=1e-6)
    assert guidance_mode(1.0, 2.0) == "expression" and guidance_mode(2.0, 1.0) == "dual"
    with pytest.raises(ValueError, match="expression guidance needs lip_scale == 1"):
        guidance_mode(1.5, 2.0, "expression")
    n = 14
    br, noise = _branches(n), _noise(n)
    auto = SamplerConfig(steps=3, window=8, overlap=3, expr_scale=2.5, ramp=(0.2, 1.0))
    dual = SamplerConfig(steps=3, window=8, overlap=3, expr_scale=2.5, ramp=(0.2, 1.0), guidance="dual")
    guided = sample(_temporal, br._replace(null=None), jax.random.key(0), auto, noise=noise)
    np.testing.assert_allclose(guided, sample(_temporal, br, jax.random.key(0), dual, noise=noise),
                               rtol=1e-5, atol=1e-5)
    assert not np.allclose(guided, sample(_temporal, br.cond, jax.random.key(0), SMALL, noise=noise), atol=1e-3)


# ------------------------------------------------------------------ configs


def test_presets():
    from configs.sampler import get_config, sampler_config

    c512, c1024 = get_config("512"), get_config("1024")
    assert (c512.steps, c512.window, c512.overlap) == (25, 120, 24)
    assert (c1024.steps, c1024.window, c1024.overlap) == (25, 32, 12)
    assert (c512.lip_scale, c512.expr_scale) == (2.0, 2.0)  # two branches: the paper's cost tables
    assert sampler_config(get_config("512,lip_scale=3.0,batch_windows=0")) == SamplerConfig(
        lip_scale=3.0, expr_scale=2.0, batch_windows=0)


# ------------------------------------------------------------------ Di-CTE long sampling


def test_chunk_schedule():
    assert chunk_schedule(100) == [(0, 100, 0)]
    assert chunk_schedule(500) == [(0, 220, 0), (220, 200, 20), (420, 80, 20)]
    assert chunk_schedule(10, chunk=4, prefix_frames=0) == [(0, 4, 0), (4, 4, 0), (8, 2, 0)]


def test_sample_long_continues_from_the_last_frames():
    calls = []

    def chunk_fn(start, num_new, prefix, key):
        calls.append((start, num_new, None if prefix is None else np.asarray(prefix)))
        return jnp.broadcast_to(jnp.arange(start, start + num_new, dtype=jnp.float32)[None, :, None], (2, num_new, 3))

    out = sample_long(chunk_fn, 47, jax.random.key(0), chunk=20, prefix_frames=5)
    assert out.shape == (2, 47, 3)
    np.testing.assert_array_equal(out[0, :, 0], np.arange(47))
    assert [(s, n) for s, n, _ in calls] == [(0, 20), (20, 15), (35, 12)]
    for s, _, prefix in calls[1:]:
        np.testing.assert_array_equal(prefix[0, :, 0], np.arange(s - 5, s))


# ------------------------------------------------------------------ the real backbone


def test_tiny_ethd_windowed_guided_sampling():
    """The real backbone through windows (batched 2 per call) and 3 batched guidance branches, one program."""
    from emotivetalk_jax.models import ethd
    from flax import nnx

    from emotivetalk_jax.models.ethd_variants import TINY

    model = nnx.eval_shape(lambda: ethd.ETHD.from_svd_config(dict(TINY.svd.unet), TINY.ethd, rngs=nnx.Rngs(0)))
    r = np.random.default_rng(0)
    nnx.update(model, jax.tree.map(lambda x: jnp.asarray(0.1 * r.normal(size=x.shape), x.dtype), nnx.state(model)))
    b, n, h, e = 1, 7, 8, TINY.ethd
    rand = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)
    cond = Conditions(rand(b, h, h, 4), {"lip_tokens": rand(b, n, 1, e.lip_dim), "e_dri": rand(b, n, e.expr_dim)},
                      {"added_time_ids": jnp.asarray([[24.0, 127.0, 0.02]]), "e_ref": rand(b, e.expr_dim),
                       "lip_mask": jnp.zeros((b, h, h, 1)), "face_mask": jnp.ones((b, h, h, 1))})
    # expression dropped = e_dri := e_ref (EDI then adds exactly zero); null also drops lip and reference
    no_expr = cond._replace(frame={**cond.frame, "e_dri": jnp.broadcast_to(cond.video["e_ref"][:, None], (b, n, e.expr_dim))})
    br = Branches(cond, no_expr, drop(no_expr, "lip_tokens", reference=True))
    kw = dict(steps=2, window=4, overlap=2, batch_windows=2, guidance="dual")
    traces = sampler_lib.compiled_programs()
    guided = sample(model, br, jax.random.key(0), SamplerConfig(lip_scale=2.0, expr_scale=1.5, **kw))
    same = sample(model, Branches(cond, cond, cond), jax.random.key(0), SamplerConfig(lip_scale=2.0, expr_scale=1.5, **kw))
    unguided = sample(model, br, jax.random.key(0), SamplerConfig(**kw))
    assert sampler_lib.compiled_programs() - traces == 1  # scales are data, not part of the program
    assert guided.shape == (b, n, h, h, 4) and np.all(np.isfinite(guided))
    np.testing.assert_allclose(same, unguided, rtol=1e-4, atol=1e-4)
    assert not np.allclose(guided, unguided, atol=1e-3)
