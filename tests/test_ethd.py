"""ETHD backbone (3.3): SVD inheritance, exact equality at init, EDI / temporal expression
branches and their masks, the stage-2 x0 loss and its gradients, parameter counts.

Models are built abstractly and filled with random weights (every SVD tensor random, so
zero-initialised SVD layers and fixed mix factors cannot hide anything); the new branches
are perturbed away from their zero-initialised outputs wherever a test needs them active.
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.convert.engine import random_params
from emotivetalk_jax.convert.ethd import inherit_svd
from emotivetalk_jax.diffusion.edm import precondition
from emotivetalk_jax.diffusion.ethd_loss import ETHDBatch, ethd_loss, stage2_trainable, x0_loss
from emotivetalk_jax.models.ethd import (
    ETHD, NEW_PARAMS, SVD_PARAMS, ETHDSpatialBlock, ETHDTemporalBlock, ExpressionDecouplingInjector,
)
from emotivetalk_jax.models.layers import param_count
from emotivetalk_jax.models.ethd_variants import TINY, get_ethd_variant
from emotivetalk_jax.models.unet import UNetSpatioTemporal

B, F, H = 2, 4, 8
CFG = TINY.ethd
_FAST = {"xla_backend_optimization_level": 0}


def _flat(model, filt=nnx.Param) -> dict:
    return {".".join(map(str, p)): v.value for p, v in nnx.to_flat_state(nnx.state(model, filt))}


_BRANCHES = nnx.All(NEW_PARAMS, nnx.Not(nnx.PathContains("lip_proj")))


def _perturb_new(model, seed: int = 7, filt=NEW_PARAMS):
    """A copy whose added parameters (zero output kernels included) are random."""
    graphdef, new, rest = nnx.split(model, filt, ...)
    rng = np.random.default_rng(seed)
    flat = []
    for p, v in nnx.to_flat_state(new):
        fan_in = v.shape[0] if v.ndim > 1 else 10
        flat.append((p, v.replace(jnp.asarray(v.value + rng.standard_normal(v.shape) / np.sqrt(fan_in), v.dtype))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat), rest)


def _compiled(model, *args):
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda st, *a: nnx.merge(graphdef, st)(*a))
    exe = fn.lower(state, *args).compile(compiler_options=_FAST)
    return lambda m, *a: np.asarray(exe(nnx.state(m), *a))


def _masks():
    lip, face = np.zeros((B, H, H, 1), np.float32), np.zeros((B, H, H, 1), np.float32)
    lip[:, 5:7, 3:6], face[:, 1:7, 1:7] = 1, 1
    face[1, 1:3] = 0  # masks differ per video
    return jnp.asarray(lip), jnp.asarray(face)


@pytest.fixture(scope="module")
def models():
    unet = random_params(nnx.eval_shape(
        lambda: UNetSpatioTemporal.from_diffusers_config(dict(TINY.svd.unet), rngs=nnx.Rngs(0))), seed=1)
    ethd = inherit_svd(unet, CFG, seed=0)
    return unet, ethd


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    a = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    lip = jnp.broadcast_to(a(B, 1, 1, CFG.lip_dim), (B, F, 1, CFG.lip_dim))  # same lip tokens in every frame
    ids = jnp.asarray([[24.0, 127.0, 0.02], [9.0, 40.0, 0.08]])
    return dict(sample=a(B, F, H, H, 8), c_noise=jnp.asarray([0.3, -0.6]), lip=lip, ids=ids,
                e_dri=a(B, F, CFG.expr_dim), e_ref=a(B, CFG.expr_dim))


@pytest.fixture(scope="module")
def outputs(models, inputs):
    """SVD UNet output on the lip-projected context, and the compiled ETHD forward."""
    unet, ethd = models
    i = inputs
    context = ethd.lip_proj(i["lip"])[:, 0]  # (B, L, D): the same projected context SVD gets
    svd_args = (i["sample"], i["c_noise"], context, i["ids"])
    want = _compiled(unet, *svd_args)(unet, *svd_args)
    lip, face = _masks()
    args = (i["sample"], i["c_noise"], i["lip"], i["ids"], i["e_dri"], i["e_ref"], lip, face)
    return want, _compiled(ethd, *args), args


def test_inherits_every_svd_tensor(models):
    unet, ethd = models
    svd, got = _flat(unet), _flat(ethd)
    assert set(svd) <= set(got)
    for k, v in svd.items():
        assert got[k].dtype == v.dtype and np.array_equal(np.asarray(got[k]), np.asarray(v)), k
    new = set(_flat(ethd, NEW_PARAMS))
    assert new == set(got) - set(svd) and set(_flat(ethd, SVD_PARAMS)) == set(svd)
    zero_out = [k for k in new if k.endswith("to_out.0.kernel")]
    n_spatial = sum(k.endswith("transformer_blocks.0.attn1.to_q.kernel") and ".temporal_" not in k for k in got)
    assert n_spatial == 4 and len(zero_out) == 2 * n_spatial  # every spatial and temporal block has a branch
    assert all(not np.any(np.asarray(got[k])) for k in zero_out)
    assert not any(k.endswith("edi.attn.to_out.0.bias") for k in got)  # cancels in eq. 9


def test_fresh_build_matches_inherited_structure(models):
    _, ethd = models
    fresh = nnx.eval_shape(lambda: ETHD.from_svd_config(dict(TINY.svd.unet), CFG, rngs=nnx.Rngs(0)))
    assert {k: v.shape for k, v in _flat(fresh).items()} == {k: v.shape for k, v in _flat(ethd).items()}


def test_init_equals_svd_exactly(models, outputs):
    _, ethd = models
    want, fwd, args = outputs
    got = fwd(ethd, *args)
    assert got.shape == (B, F, H, H, 4) and float(np.abs(want).mean()) > 0.1
    assert float(np.abs(got - want).max()) == 0.0


def test_masks_switch_both_branches_off_exactly(models, outputs):
    """Active EDI + temporal branches: exactly SVD outside the face and inside the lip box."""
    _, ethd = models
    want, fwd, args = outputs
    active = _perturb_new(ethd, filt=_BRANCHES)  # lip_proj kept: SVD got its context
    ones, zeros = jnp.ones((B, H, H, 1)), jnp.zeros((B, H, H, 1))
    no_face = fwd(active, *args[:6], zeros, zeros)
    all_lip = fwd(active, *args[:6], ones, ones)
    boxes = fwd(active, *args)
    assert float(np.abs(no_face - want).max()) == 0.0
    assert float(np.abs(all_lip - want).max()) == 0.0
    assert float(np.abs(boxes - want).max()) > 1e-3  # the branches do act inside the gate


def test_pose_guider_starts_at_svd_exactly_and_acts_once_trained(models, outputs):
    """ETHD with the pose guider (ETHDConfig.pose) and a pose given: exactly SVD at init (its
    output conv is zero); with the guider trained (perturbed) the pose changes the output, and a
    dropped pose (pose_keep 0) gives SVD exactly again. Built as stage 2 builds it from a
    backbone trained without the guider (`train.stages.ethd.ethd_model`): every array kept."""
    import dataclasses

    _, ethd = models
    want, _, args = outputs
    posed = inherit_svd(ethd, dataclasses.replace(CFG, pose=True), seed=0)
    got, before = _flat(posed), _flat(ethd)
    assert all(np.array_equal(np.asarray(got[k]), np.asarray(v)) for k, v in before.items())
    guider = {k: v for k, v in got.items() if k not in before}
    assert guider and all(k.startswith("pose_guider.") for k in guider)
    assert all(not np.any(np.asarray(v)) for k, v in guider.items() if ".to_out." in k)
    rng = np.random.default_rng(4)
    pose = jnp.asarray(np.concatenate([rng.normal(0, [5, 0.05, 0.05], (B, F, 3)), np.ones((B, F, 1))], -1),
                       jnp.float32)
    keep, drop = jnp.ones((B,)), jnp.zeros((B,))
    fwd = _compiled(posed, *args, None, pose, keep)
    assert float(np.abs(fwd(posed, *args, None, pose, keep) - want).max()) == 0.0
    active = _perturb_new(posed, filt=nnx.All(nnx.Param, nnx.PathContains("pose_guider")))
    assert float(np.abs(fwd(active, *args, None, pose, keep) - want).max()) > 1e-3
    assert float(np.abs(fwd(active, *args, None, pose, drop) - want).max()) == 0.0


def test_pose_maps_known_answers():
    from emotivetalk_jax.models.pose_guider import pose_maps

    face = np.zeros((1, 8, 8, 1), np.float32)
    face[0, 2:6, 2:6] = 1  # centre (4, 4) in cells, half size 2
    still = jnp.asarray([[[0.0, 0.0, 0.0, 1.0], [0.0, 0.25, 0.0, 1.0], [90.0, 0.0, 0.0, 1.0],
                          [0.0, 0.0, 0.0, 2.0]]])
    maps = jax.jit(pose_maps, static_argnums=2)  # one compile, not one per operation
    m = np.asarray(maps(still, jnp.asarray(face), (8, 8)))  # (1, 4, 8, 8, 3)
    assert m.shape == (1, 4, 8, 8, 3)
    np.testing.assert_allclose(m[0, 0, 3, 3], [-0.25, -0.25, np.exp(-0.125)], rtol=1e-6)  # cell centre (3.5, 3.5)
    np.testing.assert_allclose(m[0, 1, 3, 5, :2], [-0.25, -0.25], rtol=1e-6)  # dx 0.25 of 8 cells: 2 cells right
    np.testing.assert_allclose(m[0, 2, 3, 5, :2], [-0.25, -0.75], atol=1e-6)  # rolled 90 degrees: u = y, v = -x
    np.testing.assert_allclose(m[0, 3, 3, 3, :2], [-0.125, -0.125], rtol=1e-6)  # twice the size
    whole = np.asarray(maps(still, None, (8, 8)))
    np.testing.assert_allclose(whole[0, 0, 3, 3, :2], [-0.125, -0.125], rtol=1e-6)  # no mask: the whole frame


def _random_module(factory, seed):
    return _perturb_new(random_params(nnx.eval_shape(factory), seed=seed), seed)


def test_edi_is_zero_when_driving_equals_reference():
    edi = random_params(nnx.eval_shape(
        lambda: ExpressionDecouplingInjector(32, 2, 16, CFG.expr_context_dim, rngs=nnx.Rngs(0))), seed=3)
    assert np.any(np.asarray(edi.attn.to_out[0].kernel.value))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((3, 10, 32)), jnp.float32)
    e, e2 = (jnp.asarray(rng.standard_normal((3, 4, CFG.expr_context_dim)), jnp.float32) for _ in range(2))
    assert float(jnp.abs(edi(x, e, e)).max()) == 0.0
    assert float(jnp.abs(edi(x, e, e2)).max()) > 1e-3


def _gate(s: int) -> np.ndarray:
    g = np.zeros((s,), np.float32)
    g[s // 3: 2 * s // 3] = 1
    return g


def test_spatial_edi_acts_only_inside_gate():
    block = _random_module(lambda: ETHDSpatialBlock(32, 2, 16, cross_attention_dim=24, ethd=CFG, rngs=nnx.Rngs(0)), 4)
    off = nnx.clone(block)  # same block, EDI output kernel zeroed
    k = off.edi.attn.to_out[0].kernel
    k.value = jnp.zeros_like(k.value)
    rng = np.random.default_rng(2)
    a = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    s = 12
    gate = jnp.broadcast_to(jnp.asarray(_gate(s))[None, :, None], (3, s, 1))
    kw = dict(edi_dri=a(3, 4, CFG.expr_context_dim), edi_ref=a(3, 4, CFG.expr_context_dim), spatial_gate=gate)
    x, ctx = a(3, s, 32), a(3, 2, 24)
    run = nnx.jit(lambda m, x, ctx, kw: m(x, ctx, **kw))
    on_out, off_out = np.asarray(run(block, x, ctx, kw)), np.asarray(run(off, x, ctx, kw))
    inside = _gate(s).astype(bool)
    assert np.array_equal(on_out[:, ~inside], off_out[:, ~inside])
    assert np.abs(on_out[:, inside] - off_out[:, inside]).min() > 0
    same = dict(kw, edi_ref=kw["edi_dri"])
    assert np.array_equal(np.asarray(run(block, x, ctx, same)), off_out)


def test_temporal_expression_acts_only_inside_gate():
    block = _random_module(
        lambda: ETHDTemporalBlock(32, 32, 2, 16, cross_attention_dim=24, ethd=CFG, rngs=nnx.Rngs(0)), 5)
    off = nnx.clone(block)
    k = off.temporal_expr_attn.to_out[0].kernel
    k.value = jnp.zeros_like(k.value)
    off.temporal_expr_attn.to_out[0].bias.value = jnp.zeros_like(off.temporal_expr_attn.to_out[0].bias.value)
    rng = np.random.default_rng(3)
    a = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    b, f, s = 2, 3, 6
    gate = jnp.asarray(np.tile(_gate(s), b)).reshape(b * s, 1, 1)
    kw = dict(temporal_expr_context=a(b, f * 4, CFG.expr_context_dim), temporal_gate=gate)
    x, ctx = a(b * f, s, 32), a(b * s, 2, 24)
    run = nnx.jit(lambda m, x, ctx, kw: m(x, f, ctx, **kw))
    on_out = np.asarray(run(block, x, ctx, kw)).reshape(b, f, s, 32)
    off_out = np.asarray(run(off, x, ctx, kw)).reshape(b, f, s, 32)
    inside = _gate(s).astype(bool)
    assert np.array_equal(on_out[:, :, ~inside], off_out[:, :, ~inside])
    assert np.abs(on_out[:, :, inside] - off_out[:, :, inside]).min() > 0


def _batch(inputs, lip, face) -> ETHDBatch:
    rng = np.random.default_rng(5)
    a = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    return ETHDBatch(latents=a(B, F, H, H, 4), ref_latent=a(B, H, H, 4), lip_tokens=inputs["lip"],
                     e_v=inputs["e_dri"], e_a=a(B, F, CFG.expr_dim), e_ref=inputs["e_ref"],
                     added_time_ids=inputs["ids"], lip_mask=lip, face_mask=face)


def test_loss_is_zero_for_a_perfect_denoiser(inputs):
    batch = _batch(inputs, *_masks())
    sigma = jnp.asarray([0.5, 3.0])
    assert float(x0_loss(batch.latents, batch.latents, sigma)) == 0.0
    assert float(x0_loss(batch.latents + 0.1, batch.latents, sigma)) > 0

    def oracle(sample, c_noise, *_):  # the raw output F that makes D(x_t) = x0
        s = jnp.exp(4.0 * c_noise).reshape(-1, 1, 1, 1, 1)
        p = precondition(s)
        x_t = sample[..., :4] / p.c_in
        return (batch.latents - p.c_skip * x_t) / p.c_out

    loss, aux = jax.jit(lambda b, k: ethd_loss(oracle, b, k))(batch, jax.random.key(0))
    assert aux["sigma"].shape == (B,) and float(loss) < 1e-8


def test_loss_passes_the_pose_and_drops_it_per_clip(inputs):
    """With `ETHDBatch.pose` the backbone gets it and a per-clip keep: all 1 at p_drop_pose 0, all 0
    at 1; without a pose the backbone's call is as before (no pose keywords)."""
    seen = []

    def spy(sample, c_noise, *args, **kw):
        seen.append(kw)
        return jnp.zeros(sample.shape[:-1] + (4,), sample.dtype)

    def run(batch, p):
        ethd_loss(spy, batch, jax.random.key(0), p_drop_pose=p)
        return seen[-1].get("pose"), seen[-1].get("pose_keep")

    run = jax.jit(run, static_argnums=1)
    batch = _batch(inputs, *_masks())
    assert run(batch, 0.0) == (None, None) and seen[-1] == {}
    for p, keep in ((0.0, 1.0), (1.0, 0.0)):
        pose, kept = run(batch._replace(pose=jnp.ones((B, F, 4))), p)
        assert np.array_equal(np.asarray(pose), np.ones((B, F, 4)))
        assert np.array_equal(np.asarray(kept), np.full(B, keep))


def test_gradients_reach_every_ethd_parameter_and_nothing_frozen(models, inputs):
    """Stage 2: a frozen V-AID projector computes l_a inside the differentiated loss."""
    from emotivetalk_jax.models.perceiver import AudioLipProjector
    from emotivetalk_jax.models.vaid_variants import get_vaid_variant

    _, ethd = models
    pcfg = get_vaid_variant("tiny").perceiver
    assert pcfg.out_dim == CFG.lip_dim
    projector = random_params(nnx.eval_shape(lambda: AudioLipProjector(pcfg, rngs=nnx.Rngs(0))), seed=9)

    class Stage2(nnx.Module):
        def __init__(self, ethd, vaid_projector):
            self.ethd, self.vaid_projector = ethd, vaid_projector

    models2 = Stage2(_perturb_new(ethd), projector)
    windows = jnp.asarray(np.random.default_rng(6).standard_normal(
        (B, F, 2 * pcfg.window_half_width + 1, pcfg.audio_dim)), jnp.float32)
    batch = _batch(inputs, *_masks())

    def loss_fn(m, batch, windows, key):
        l_a = m.vaid_projector(windows)
        return ethd_loss(m.ethd, batch._replace(lip_tokens=l_a), key)[0]

    graphdef, state = nnx.split(models2)

    def grads_of(state, batch, windows, key):
        return nnx.grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param))(nnx.merge(graphdef, state), batch, windows, key)

    key = jax.random.key(1)
    grads = jax.jit(grads_of).lower(state, batch, windows, key).compile(compiler_options=_FAST)(
        state, batch, windows, key)
    flat = {".".join(map(str, p)): np.asarray(v.value) for p, v in nnx.to_flat_state(grads)}
    ethd_g = {k: v for k, v in flat.items() if k.startswith("ethd.")}
    vaid_g = {k: v for k, v in flat.items() if k.startswith("vaid_projector.")}
    assert len(ethd_g) == len(_flat(ethd)) and vaid_g
    dead = [k for k, v in ethd_g.items() if not np.any(v) or not np.all(np.isfinite(v))]
    assert not dead, f"no gradient reaches {dead}"
    assert all(not np.any(v) for v in vaid_g.values())
    # The narrower stage-2 option selects exactly the additions.
    assert set(_flat(ethd, stage2_trainable(False))) == set(_flat(ethd, NEW_PARAMS))
    assert set(_flat(ethd, stage2_trainable(True))) == set(_flat(ethd))


def test_full_size_parameter_counts():
    v = get_ethd_variant("emotivetalk_512")
    ethd = nnx.eval_shape(lambda: ETHD.from_svd_config(dict(v.svd.unet), v.ethd, rngs=nnx.Rngs(0)))
    svd, total, new = param_count(ethd, SVD_PARAMS), param_count(ethd), param_count(ethd, NEW_PARAMS)
    assert svd == 1_524_623_082  # diffusers' SVD UNet (REFERENCE.md)
    assert total == svd + new and round(total / 1e9, 2) == 1.58  # the paper's 1.58G backbone


def test_info_tiny():
    from emotivetalk_jax.info import info_main

    out = info_main("tiny")
    p = out["params"]
    kinds = p["ethd_lip_proj"] + p["ethd_expr_proj"] + p["ethd_edi"] + p["ethd_temporal_expr"]
    assert kinds == p["ethd_additions"] and p["ethd_backbone"] == p["unet_svd"] + p["ethd_additions"]
    assert p["vae"] == p["vae_encoder"] + p["vae_decoder"] and p["audio_encoder"] > 0 and "vaid_vaid" in p
    assert out["window"] == TINY.inference.window


@pytest.mark.parametrize("fmt", ["diffusers", "native"])
def test_load_ethd_from_svd_checkpoint(models, tmp_path, fmt):
    from emotivetalk_jax.convert.native import save_model
    from emotivetalk_jax.convert.svd import export_diffusers_unet
    from emotivetalk_jax.convert.ethd import load_ethd_from_svd

    unet, _ = models
    if fmt == "diffusers":
        export_diffusers_unet(unet, tmp_path / "unet")
        path = tmp_path  # an SVD repository root with unet/
    else:
        path = save_model(unet, tmp_path / "unet", "unet")
    ethd = load_ethd_from_svd(path, CFG, seed=3)
    got, want = _flat(ethd), _flat(unet)
    assert all(np.array_equal(np.asarray(got[k]), np.asarray(v)) for k, v in want.items())
    assert set(got) - set(want) == set(_flat(ethd, NEW_PARAMS))


def test_ethd_native_checkpoint_round_trip(tmp_path):
    from emotivetalk_jax.convert.engine import abstract_model, export_tensors, random_params
    from emotivetalk_jax.convert.native import load_model, save_model
    from emotivetalk_jax.convert.svd import SVD_RULES
    from emotivetalk_jax.models.ethd import ETHD
    from emotivetalk_jax.models.ethd_variants import get_ethd_variant

    v = get_ethd_variant("tiny")
    model = random_params(abstract_model(lambda: ETHD.from_svd_config(dict(v.svd.unet), v.ethd, rngs=nnx.Rngs(0))), 5)
    save_model(model, tmp_path / "ethd", "ethd")
    back = load_model(tmp_path / "ethd")
    assert isinstance(back, ETHD) and back.ethd_config == model.ethd_config
    a, b = export_tensors(model, SVD_RULES), export_tensors(back, SVD_RULES)
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_condition_dropout_known_answers():
    from emotivetalk_jax.diffusion.ethd_loss import drop_conditions

    r = np.random.default_rng(0)
    lip = jnp.asarray(r.normal(size=(64, 3, 2, 5)), jnp.float32)
    e_dri = jnp.asarray(r.normal(size=(64, 3, 4)), jnp.float32)
    e_ref = jnp.asarray(r.normal(size=(64, 4)), jnp.float32)
    key = jax.random.key(1)
    same = drop_conditions(key, lip, e_dri, e_ref, 0.0, 0.0)
    assert np.array_equal(same[0], lip) and np.array_equal(same[1], e_dri) and np.asarray(same[2]).all()
    gone = drop_conditions(key, lip, e_dri, e_ref, 1.0, 1.0)
    assert not np.asarray(gone[0]).any() and not np.asarray(gone[2]).any()
    np.testing.assert_array_equal(gone[1], np.broadcast_to(np.asarray(e_ref)[:, None], e_dri.shape))
    half_lip, half_expr, kept_expr = drop_conditions(key, lip, e_dri, e_ref, 0.5, 0.5)
    kept_expr = np.asarray(kept_expr)
    assert 16 < (~kept_expr).sum() < 48
    np.testing.assert_array_equal(np.asarray(half_expr)[kept_expr], np.asarray(e_dri)[kept_expr])
    np.testing.assert_array_equal(np.asarray(half_expr)[~kept_expr],
                                  np.broadcast_to(np.asarray(e_ref)[:, None], e_dri.shape)[~kept_expr])
    dropped = ~np.asarray(half_lip).reshape(64, -1).any(axis=1)
    assert 16 < dropped.sum() < 48  # per clip, about half
    kept = ~dropped
    np.testing.assert_array_equal(np.asarray(half_lip)[kept], np.asarray(lip)[kept])
