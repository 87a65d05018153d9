"""Consistency distillation and the few-step sampler: known answers on small functions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from emotivetalk_jax.diffusion import consistency as C
from emotivetalk_jax.diffusion.edm import SIGMA_MAX, SIGMA_MIN, denoise
from emotivetalk_jax.diffusion.ethd_loss import ETHDBatch
from emotivetalk_jax.diffusion.guidance import Branches, Conditions
from emotivetalk_jax.diffusion.sampler import SamplerConfig, sample


def test_boundary_condition_and_schedule():
    x = jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 4))
    d = jax.random.normal(jax.random.key(1), x.shape)
    np.testing.assert_array_equal(C.consistency_fn(x, d, SIGMA_MIN), x)  # f(x, s_min) = x exactly
    c_skip, c_out = C.boundary(jnp.asarray([SIGMA_MIN, 1.0, SIGMA_MAX]))
    np.testing.assert_allclose(c_skip, [1.0, 0.25 / (9.98**2 + 0.25), 0.25 / (6999.98**2 + 0.25)], rtol=1e-5)
    np.testing.assert_allclose(c_out[0], 0.0, atol=0)
    assert float(c_out[2]) > 0.999999  # far from s_min, f is D itself
    np.testing.assert_allclose(c_skip**2 * 0 + c_skip + 0 * c_out, c_skip)  # shapes broadcast per sample
    per = C.consistency_fn(x, d, jnp.asarray([SIGMA_MIN, SIGMA_MAX]))
    np.testing.assert_array_equal(per[0], x[0])
    np.testing.assert_allclose(per[1], d[1], atol=2e-6)

    g = C.distillation_grid(32)
    assert g[0] == np.float32(SIGMA_MAX) and np.isclose(g[-1], SIGMA_MIN) and np.all(np.diff(g) < 0)
    one, two, four = (C.student_sigmas(s) for s in (1, 2, 4))
    np.testing.assert_array_equal(one, [g[0], 0.0])
    assert len(two) == 3 and two[1] in g and abs(np.log(two[1] / C.SIGMA_HI)) < 0.3
    assert len(four) == 5 and set(four[:-1]) <= set(g) and np.all(np.diff(four) < 0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        C.student_sigmas(0)


def _per_frame_backbone(sample, c_noise, *, bias):
    """A backbone without temporal mixing: fused window predictions equal the per-frame ones."""
    return 0.5 * sample[..., :4] - 0.25 * sample[..., 4:] + bias[:, :, None, None, :] + c_noise[:, None, None, None, None]


def test_one_consistency_step_is_the_students_x0_of_pure_noise():
    h, c, n = 4, 4, 10
    ref = jax.random.normal(jax.random.key(2), (1, h, h, c))
    bias = jax.random.normal(jax.random.key(3), (1, n, c))
    noise = jax.random.normal(jax.random.key(4), (1, n, h, h, c))
    cond = Branches(Conditions(ref, {"bias": bias}, {}))
    for window, overlap in ((n, 0), (4, 2)):  # one exact window, and fused windows
        cfg = SamplerConfig(steps=1, window=window, overlap=overlap, kind="consistency")
        got = sample(_per_frame_backbone, cond, jax.random.key(5), cfg, noise=noise)
        x = noise * np.sqrt(SIGMA_MAX**2 + 1.0)
        sig = jnp.float32(SIGMA_MAX)

        def raw(xs, c_noise):
            full = jnp.concatenate([xs, jnp.broadcast_to(ref[:, None], xs.shape)], axis=-1)
            return _per_frame_backbone(full, c_noise, bias=bias)

        want = C.consistency_fn(x, denoise(raw, x, sig), sig)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_one_step_from_the_reference_noised_to_sigma_start():
    """sigma_start > 0: x = start + sigma z at the grid point nearest sigma_start, then f(x, sigma)."""
    h, c, n = 4, 4, 6
    ref = jax.random.normal(jax.random.key(2), (1, h, h, c))
    bias = jax.random.normal(jax.random.key(3), (1, n, c))
    noise = jax.random.normal(jax.random.key(4), (1, n, h, h, c))
    start = 0.18215 * ref[:, None]
    cond = Branches(Conditions(ref, {"bias": bias}, {}))
    cfg = SamplerConfig(steps=1, window=n, kind="consistency", sigma_start=5.0)
    sig = cfg.sigmas()
    g = C.distillation_grid(C.GRID)
    assert sig.shape == (2,) and float(sig[0]) in g and abs(np.log(float(sig[0]) / 5.0)) < 0.3 and sig[1] == 0
    got = sample(_per_frame_backbone, cond, jax.random.key(5), cfg, noise=noise, start=start)
    x = start + sig[0] * noise

    def raw(xs, c_noise):
        full = jnp.concatenate([xs, jnp.broadcast_to(ref[:, None], xs.shape)], axis=-1)
        return _per_frame_backbone(full, c_noise, bias=bias)

    np.testing.assert_allclose(got, C.consistency_fn(x, denoise(raw, x, sig[0]), sig[0]), rtol=2e-5, atol=2e-5)
    ddim = SamplerConfig(steps=3, window=n, sigma_start=5.0).sigmas()  # DDIM: Karras from sigma_start
    np.testing.assert_allclose(ddim[0], 5.0, rtol=1e-6)
    with pytest.raises(ValueError, match="needs both"):
        sample(_per_frame_backbone, cond, jax.random.key(5), cfg, noise=noise)
    with pytest.raises(ValueError, match="must lie above sigma_hi"):
        SamplerConfig(steps=2, kind="consistency", sigma_start=1.0, sigma_hi=2.0).sigmas()
    import dataclasses

    from emotivetalk_jax.bundle import BundleError, BundleSettings

    with pytest.raises(BundleError, match="bad pipeline settings"):
        dataclasses.replace(BundleSettings.for_variant("tiny"), sigma_start=-1.0)


def test_inpainting_holds_the_known_frames_and_guidance_is_refused():
    h, c, n = 4, 4, 6
    ref = jax.random.normal(jax.random.key(2), (1, h, h, c))
    cond = Branches(Conditions(ref, {"bias": jnp.zeros((1, n, c))}, {}))
    known = jax.random.normal(jax.random.key(6), (1, 2, h, h, c))
    for kind, steps in (("consistency", 2), ("ddim", 3)):
        cfg = SamplerConfig(steps=steps, window=n, overlap=2, kind=kind)
        out = sample(_per_frame_backbone, cond, jax.random.key(7), cfg, num_frames=n, latent_shape=(h, h, c),
                     known=known)
        np.testing.assert_array_equal(out[:, :2], known)
        assert np.all(np.isfinite(out)) and not np.allclose(out[:, 2:], 0)
    with pytest.raises(ValueError, match="guidance folded in"):
        SamplerConfig(steps=2, kind="consistency", expr_scale=1.5)
    with pytest.raises(ValueError, match="sampler kind"):
        SamplerConfig(kind="lcm")
    with pytest.raises(ValueError, match="inpainting needs"):
        sample(_per_frame_backbone, cond, jax.random.key(7), SamplerConfig(steps=1, window=n, kind="consistency"),
               num_frames=n, latent_shape=(h, h, c), known=jnp.zeros((1, n, h, h, c)))


class _Tiny(nnx.Module):
    """ETHD's call signature over a 1x1 convolution of the sample and the expression condition."""

    def __init__(self, seed: int):
        self.conv = nnx.Linear(8, 4, rngs=nnx.Rngs(seed))
        self.expr = nnx.Linear(3, 4, rngs=nnx.Rngs(seed + 1))

    def __call__(self, sample, c_noise, lip_tokens, added_time_ids, e_dri, e_ref, lip_mask, face_mask):
        return self.conv(sample) + self.expr(e_dri - e_ref[:, None])[:, :, None, None] * c_noise[:, None, None, None,
                                                                                                    None]


def _batch():
    k = jax.random.split(jax.random.key(8), 6)
    b, f, h = 2, 3, 4
    return ETHDBatch(jax.random.normal(k[0], (b, f, h, h, 4)), jax.random.normal(k[1], (b, h, h, 4)),
                     jax.random.normal(k[2], (b, f, 5)), jax.random.normal(k[3], (b, f, 3)),
                     jax.random.normal(k[4], (b, f, 3)), jax.random.normal(k[5], (b, 3)), jnp.zeros((b, 3)),
                     jnp.zeros((b, h, h, 1)), jnp.ones((b, h, h, 1)))


def test_guided_teacher_and_one_distillation_step_lowers_the_loss():
    teacher, student = _Tiny(0), _Tiny(10)
    eb = _batch()
    x = jax.random.normal(jax.random.key(9), eb.latents.shape) * 3.0
    s = jnp.full((2,), 3.0)
    guided = C.guided_denoise(teacher, x, s, eb, eb.e_v, 1.0, 2.0)  # "expression" mode: no_expr + 2 (cond - no_expr)
    from emotivetalk_jax.diffusion.ethd_loss import ethd_denoise

    args = (eb.ref_latent, eb.lip_tokens, eb.added_time_ids)
    cond = ethd_denoise(teacher, x, s, *args, eb.e_v, eb.e_ref, eb.lip_mask, eb.face_mask)
    no_expr = ethd_denoise(teacher, x, s, *args, jnp.broadcast_to(eb.e_ref[:, None], eb.e_v.shape), eb.e_ref,
                           eb.lip_mask, eb.face_mask)
    np.testing.assert_allclose(guided, no_expr + 2.0 * (cond - no_expr), rtol=1e-5, atol=1e-5)

    graph, params = nnx.split(student)
    tx = optax.adam(1e-2)
    opt = tx.init(params)
    key, grid = jax.random.key(11), C.distillation_grid(8)

    @jax.jit
    def loss(p, target_p):
        return C.distillation_loss(nnx.merge(graph, p), nnx.merge(graph, target_p), teacher, eb, key, grid=grid,
                                   lip_scale=1.0, expr_scale=2.0)[0]

    before = float(loss(params, params))
    g = jax.grad(loss)(params, params)
    upd, opt = tx.update(g, opt, params)
    after = float(loss(optax.apply_updates(params, upd), params))  # the target stays where it was (the EMA)
    assert np.isfinite(before) and after < before
    # the anchor: the student's D against the teacher's guided D, 0 for the teacher itself unguided
    _, aux = C.distillation_loss(teacher, teacher, teacher, eb, key, grid=grid, anchor=1.0)
    assert float(aux["anchor"]) == 0.0 and float(aux["consistency"]) > 0
    _, aux = C.distillation_loss(teacher, teacher, teacher, eb, key, grid=grid, expr_scale=2.0, anchor=1.0)
    assert float(aux["anchor"]) > 0


FAST = "{'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}"


def _flat(module) -> dict[str, np.ndarray]:
    from emotivetalk_jax import sharding as shd

    return {shd.path_str(p): np.asarray(v.value) for p, v in nnx.to_flat_state(nnx.state(module))}


@pytest.mark.long
def test_student_stage_distils_a_bundle_exports_and_samples(tmp_path):
    """Stage student from a bundle's folders: the teacher is frozen and the student starts equal to
    it; one step trains; export-bundle gives a consistency bundle with the teacher bundle's
    folded guidance, codebook and settings; the pipeline samples it in 1 and 2 steps; a guidance
    setting on it and bad stage settings are refused in one line."""
    from configs.train import get_config
    from emotivetalk_jax import bundle as B
    from emotivetalk_jax import cli
    from emotivetalk_jax.pipeline import EmotiveTalkPipeline
    from emotivetalk_jax.train.commands import train_from_args
    from emotivetalk_jax.train.stages import build_stage

    src = B.make_random_bundle(tmp_path / "src", "tiny", 3, resolution=16, expr_scale=2.0)
    parts = dict(vae="vae", face_encoders="face_encoders", vaid="vaid", audio="audio")
    init = {**{k: str(src / v) for k, v in parts.items()}, "teacher": str(src / "ethd")}
    cfg = get_config("stage=student,variant=tiny")
    for k, v in init.items():
        cfg.init[k] = v
    stage = build_stage(cfg)
    want = _flat(B.load_bundle(src).ethd)
    teacher = _flat(nnx.merge(stage.frozen_graphdef, stage.frozen_state).teacher)
    student = _flat(stage.model(stage.init_params, stage.init_rest))
    assert teacher.keys() == student.keys() == want.keys()
    assert all(np.array_equal(teacher[k], want[k]) and np.array_equal(student[k], want[k]) for k in want)
    assert stage.loss_reads_target and set(stage.frozen_state) >= {"teacher", "vae", "face", "vaid"}

    work = tmp_path / "student"
    res = train_from_args(["--config", "configs/train.py:stage=student,variant=tiny", "--workdir", str(work),
                           "--config.total_steps=1", "--config.checkpoint.every=1", "--config.batch_size=2",
                           "--config.data.num_clips=4", "--config.progress=False", "--config.e_a_steps=1",
                           f"--config.compiler_options={FAST}", *(f"--config.init.{k}={v}" for k, v in init.items())])
    assert res["status"] == "done" and np.isfinite(res["metrics"]["loss"]), res
    assert cli.main(["export-bundle", str(work), str(tmp_path / "out")]) == 0
    out = B.load_bundle(tmp_path / "out")
    s = out.settings
    assert (s.sampler, s.steps, s.lip_scale, s.expr_scale, s.folded_scales) == ("consistency", 2, 1.0, 1.0,
                                                                                 (1.0, 2.0))
    np.testing.assert_array_equal(out.codebook.means, B.load_bundle(src).codebook.means)
    assert s.window == B.read_settings(src).window
    pipe = EmotiveTalkPipeline(out, progress=False)
    wave = np.sin(np.linspace(0, 400, 16000 * 6 // 25)).astype(np.float32)  # 6 frames: two windows
    for steps in (1, 2):
        r = pipe(np.full((16, 16, 3), 128, np.uint8), wave, steps=steps, crop=False, face_box=(3, 3, 13, 13))
        assert r.frames.shape == (6, 16, 16, 3)
    assert cli.main(["export-bundle", str(work), str(tmp_path / "bad"), "--set", "expr_scale=2"]) == 2
    assert not (tmp_path / "bad").exists()

    cfg.init.teacher = ""
    with pytest.raises(ValueError, match="set init.teacher"):
        build_stage(cfg)
    cfg.init.teacher, cfg.expression_loss_weight = str(src / "ethd"), 0.1
    with pytest.raises(ValueError, match="no expression term"):
        build_stage(cfg)
    cfg.expression_loss_weight, cfg.init.teacher = 0.0, str(tmp_path / "student")  # a workdir: scales unknown
    with pytest.raises(ValueError, match="set teacher_lip_scale and teacher_expr_scale"):
        build_stage(cfg)
