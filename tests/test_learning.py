"""The learning fixes: one audio feature path, the learning gates, the neutral reference,
stage 2's EMA and lip weighting, and the audio stage chained into stage 1."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emotivetalk_jax.data import audio_cache
from emotivetalk_jax.data.pipeline import ClipWindow
from emotivetalk_jax.data.synthetic import SyntheticDomain
from emotivetalk_jax.eval import probes


@pytest.fixture(scope="module")
def pipe():
    from emotivetalk_jax.bundle import random_bundle
    from emotivetalk_jax.pipeline import EmotiveTalkPipeline

    return EmotiveTalkPipeline(random_bundle("tiny", seed=3), progress=False)


def test_training_loader_and_pipeline_give_identical_audio_windows(pipe, tmp_path):
    """The A_w of every training window (cached features -> loader slice -> stage windows) equals,
    bit for bit, the rows the pipeline's `encode_audio` feeds the projector for the same frames,
    at the clip's edges too (where the windows repeat the first / last frame)."""
    from emotivetalk_jax.train.stages import audio_windows

    domain = SyntheticDomain(0)
    clips = [domain.clip(i, "train") for i in range(3)]
    feats = audio_cache.source_features(pipe.bundle.audio, clips, cache_dir=tmp_path)
    hw, frames = 2, 8
    window = ClipWindow(frames=frames, size=32, audio_context=hw, features=feats)
    seen_edges = set()
    for clip in clips:
        want = pipe.encode_audio(clip.audio).windows  # (N, W, D): the pipeline's own
        n = clip.num_frames
        for seed in range(6):
            ex = window.random_map(clip, np.random.default_rng(seed))
            start = int(ex["start"])
            got = np.asarray(audio_windows(jnp.asarray(ex["frame_features"][None]), frames, hw))[0]
            np.testing.assert_array_equal(got, want[start : start + frames])
        for start in (0, n - frames):  # both edges, through the loader's slice
            rows = audio_cache.feature_window(feats[clip.index], start, frames, hw)
            got = np.asarray(audio_windows(jnp.asarray(rows[None]), frames, hw))[0]
            np.testing.assert_array_equal(got, want[start : start + frames])
            seen_edges.add(start == 0)
    assert seen_edges == {True, False}


def test_feature_cache_is_reused_and_keyed_by_encoder(pipe, tmp_path):
    from emotivetalk_jax.convert.audio import build_audio_encoder
    from emotivetalk_jax.convert.engine import random_params

    clips = [SyntheticDomain(0).clip(i, "train") for i in range(2)]
    first = audio_cache.source_features(pipe.bundle.audio, clips, cache_dir=tmp_path)
    path = tmp_path / audio_cache.CACHE_NAME
    stamp = path.stat().st_mtime_ns
    again = audio_cache.source_features(pipe.bundle.audio, clips, cache_dir=tmp_path)
    assert path.stat().st_mtime_ns == stamp  # loaded, not rewritten
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    other = random_params(build_audio_encoder(dict(pipe.bundle.audio.config), abstract=True), seed=99)
    changed = audio_cache.source_features(other, clips, cache_dir=tmp_path)
    assert not np.allclose(changed[0], first[0])  # another encoder: recomputed
    path.write_bytes(b"not a zip")  # a damaged cache is recomputed, not trusted
    np.testing.assert_array_equal(audio_cache.source_features(other, clips, cache_dir=tmp_path)[1], changed[1])


def test_probe_readouts_known_answers():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0]) + 0.3
    assert probes.ridge_r(x[:200], y[:200], x[200:], y[200:], lam=1e-6) > 0.9999
    noise = rng.normal(size=400)
    assert abs(probes.ridge_r(x[:200], noise[:200], x[200:], noise[200:])) < 0.2
    labels = np.repeat(np.arange(4), 50)
    centres = rng.normal(size=(4, 6)) * 10
    pts = centres[labels] + rng.normal(size=(200, 6))
    assert probes.nearest_mean_accuracy(pts, labels, pts[::-1], labels[::-1]) == 1.0
    assert probes.passed({"gate/l_v_r": 0.96, "gate/e_v_acc": 0.5, "gate/l_a_r_inference": 0.91,
                          "gate/l_a_r_training": 0.87}) == {
        "gate/l_v_r": True, "gate/e_v_acc": False, "gate/l_a_r_inference": True, "gate/l_a_r_training": False}


def test_face_gate_reads_the_truth_from_an_oracle():
    """A 'face encoder' that returns the true mouth opening and emotion scores the bars' top."""

    class Oracle:
        def __init__(self, table):
            self.table = table

        def encode_lip(self, x):
            return self.table(x)[..., :1]

        def encode_expression(self, x):
            return self.table(x)[..., 1:]

    fit, ev = probes.probe_clips("train", 8, 32), probes.probe_clips("test", 4, 32)
    assert len(set(fit.emotion.tolist())) == 8  # balanced fit set: every class has a mean
    lookup = {}
    for clips in (fit, ev):
        for f, o, e in zip(clips.frames, clips.opening, clips.emotion):
            for img, op in zip(f, o):
                lookup[img.tobytes()] = np.concatenate([[op], np.eye(8)[e]]).astype(np.float32)

    def table(x):
        px = np.round((np.asarray(x) + 1.0) * 127.5).astype(np.uint8)
        return jnp.asarray(np.stack([lookup[p.tobytes()] for p in px]))

    def latents(face, clips):
        x = np.concatenate(clips.frames).astype(np.float32) / 127.5 - 1.0
        return np.asarray(face.encode_lip(x)), np.asarray(face.encode_expression(x))

    orig = probes.face_latents
    probes.face_latents = latents
    try:
        g = probes.face_gates(Oracle(table), fit, ev)
    finally:
        probes.face_latents = orig
    assert g["gate/l_v_r"] > 0.999 and g["gate/e_v_acc"] == 1.0


def test_reference_neutral_gives_the_portrait_and_its_boxes():
    from emotivetalk_jax.data import face as facelib

    clip = SyntheticDomain(0).clip(1, "train")
    always = ClipWindow(frames=4, size=32, mask_sizes=(8,), reference_neutral=1.0)
    ex = always.random_map(clip, np.random.default_rng(0))
    np.testing.assert_array_equal(ex["reference"], clip.portrait(32))
    lm = clip.portrait_landmarks(32)
    np.testing.assert_array_equal(ex["mask_lip_8"], facelib.box_mask(facelib.lip_box(lm), 32, 8))
    never = ClipWindow(frames=4, size=32, reference_neutral=0.0)
    refs = [never.random_map(clip, np.random.default_rng(s))["reference"] for s in range(4)]
    assert not any(np.array_equal(r, clip.portrait(32)) for r in refs)  # frames of the clip (head motion)
    with pytest.raises(ValueError, match="reference_neutral is a probability"):
        from emotivetalk_jax.train.commands import load_config
        from emotivetalk_jax.train.inputs import make_dataset

        c = load_config("configs/train.py:stage=encoders,variant=tiny")
        c.data.reference_neutral = 1.5
        make_dataset(c.data, dict(frames=1, size=32, mask_sizes=(), audio_context=0), batch_size=2, seed=0)


def test_lip_weight_known_answer():
    from emotivetalk_jax.diffusion.ethd_loss import x0_loss

    x0 = jnp.zeros((1, 1, 2, 2, 1))
    d = jnp.asarray([1.0, 0.0, 0.0, 3.0]).reshape(1, 1, 2, 2, 1)
    sigma = jnp.ones((1,))  # lambda(1) = 2
    lip = jnp.asarray([1.0, 0.0, 0.0, 0.0]).reshape(1, 2, 2, 1)
    w = 1.0 + 3.0 * lip  # lip_weight 4
    # weighted mean: (4 * 1 + 9) / (4 + 3) times lambda 2
    np.testing.assert_allclose(float(x0_loss(d, x0, sigma, w)), 2 * 13 / 7, rtol=1e-6)
    np.testing.assert_allclose(float(x0_loss(d, x0, sigma)), 2 * 10 / 4, rtol=1e-6)


def test_ema_is_the_decayed_average_of_the_trained_group():
    from emotivetalk_jax.train import loop
    from emotivetalk_jax.train.commands import load_config
    from emotivetalk_jax.train.inputs import make_dataset

    c = load_config("configs/train.py:stage=encoders,variant=tiny")
    c.ema_decay, c.batch_size, c.data.num_clips = 0.75, 2, 4
    prog = loop.build_program(c, donate=False)
    state, frozen = loop.initial_state(prog, 0), loop.place_frozen(prog)
    batch = prog.global_batch(next(iter(make_dataset(c.data, prog.stage.data, batch_size=2, seed=0))))
    init = jax.device_get(state.params["main"])
    np.testing.assert_equal(jax.device_get(state.params["ema"]), init)
    new, _ = prog.step_fn(state, frozen, batch)
    trained = jax.device_get(new.params["main"])
    want = jax.tree.map(lambda a, b: 0.75 * a + 0.25 * b, init, trained)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 jax.device_get(new.params["ema"]), want)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(init)))


@pytest.mark.slow
@pytest.mark.long
def test_audio_stage_feeds_vaid_and_gates_are_logged(tmp_path):
    """encoders -> audio -> vaid (tiny, 2 steps each): every stage logs its gates at its
    checkpoint, stage 1 runs on the audio stage's trained encoder (loaded from its workdir), and
    its l_a gate computed the training way equals the inference way."""
    from emotivetalk_jax.train import stages as S
    from emotivetalk_jax.train.commands import load_config
    from emotivetalk_jax.train.loop import train

    def run(stage, name=None, vaid_train="all", **init):
        c = load_config(f"configs/train.py:stage={stage},variant=tiny")
        c.total_steps, c.log_every, c.checkpoint.every, c.gate_clips = 2, 1, 2, 3
        c.data.num_clips, c.progress, c.checkpoint.async_save = 4, False, False
        c.compiler_options = {"xla_backend_optimization_level": 0}
        c.vaid_train = vaid_train
        if stage != "encoders":
            c.frames = 6
        for k, v in init.items():
            c.init[k] = str(v)
        name = name or stage
        train(c, tmp_path / name)
        rows = [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return c, {k: v for r in rows for k, v in r.items() if k.startswith("gate/")}

    _, g0 = run("encoders")
    assert {"gate/l_v_r", "gate/e_v_acc"} <= set(g0)
    c1, g1 = run("audio", face_encoders=tmp_path / "encoders")
    assert np.isfinite(g1["gate/a_w_r"])
    c2, g2 = run("vaid", face_encoders=tmp_path / "encoders", audio=tmp_path / "audio")
    assert g2["gate/l_a_r_training"] == g2["gate/l_a_r_inference"]
    assert g2["gate/a_w_r"] == g1["gate/a_w_r"]  # the same trained encoder, read from the audio workdir
    trained = S.audio_encoder(c2, 0)
    from flax import nnx

    random = S.audio_encoder(load_config("configs/train.py:stage=vaid,variant=tiny"), 1)
    a, b = nnx.state(trained, nnx.Param).to_pure_dict(), nnx.state(random, nnx.Param).to_pure_dict()
    assert any(not np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert (tmp_path / "vaid" / audio_cache.CACHE_NAME).exists()
    assert 0.0 <= g2["gate/e_a_acc"] <= 1.0
    _dicte_retrain_keeps_the_projector(tmp_path, run)


def _dicte_retrain_keeps_the_projector(tmp_path, run):
    """vaid_train=dicte starts from a stage-1 workdir and trains Di-CTE alone: the lip projector
    (l_a, which stage 2 learns on) stays bit for bit, so `export-bundle --vaid` can pair the new
    Di-CTE with a stage 2 trained on the old V-AID; one whose projector differs is refused."""
    from flax import nnx

    from emotivetalk_jax import bundle as B
    from emotivetalk_jax.models.vaid_variants import TINY
    from emotivetalk_jax.train import stages as S
    from emotivetalk_jax.train.checkpoint import restore_model_arrays
    from emotivetalk_jax.train.commands import load_config

    with pytest.raises(ValueError, match="set init.vaid"):
        S.build_stage(load_config("configs/train.py:stage=vaid,variant=tiny", ["--config.vaid_train=dicte"]))
    with pytest.raises(ValueError, match="choose all or dicte"):
        S.build_stage(load_config("configs/train.py:stage=vaid,variant=tiny", ["--config.vaid_train=lip"]))
    c, _ = run("vaid", face_encoders=tmp_path / "encoders", audio=tmp_path / "audio", vaid=tmp_path / "vaid",
               name="dicte", vaid_train="dicte")
    base, new = restore_model_arrays(tmp_path / "vaid"), restore_model_arrays(tmp_path / "dicte")
    assert base.keys() == new.keys()
    dicte = [k for k in base if k.startswith("dicte.")]
    for k in base:
        if not k.startswith(("dicte.", "club.")):
            np.testing.assert_array_equal(new[k], base[k], err_msg=k)
    assert sum(not np.array_equal(new[k], base[k]) for k in dicte) > 0.9 * len(dicte)

    paired = B._with_dicte_from(S.vaid_model(c, TINY, 0), tmp_path / "dicte", "base")
    got = {".".join(map(str, p)): np.asarray(v.value) for p, v in nnx.to_flat_state(nnx.state(paired))}
    for k, v in new.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    other = S.vaid_model(load_config("configs/train.py:stage=vaid,variant=tiny"), TINY, 7)  # random: another projector
    with pytest.raises(B.BundleError, match="projector"):
        B._with_dicte_from(other, tmp_path / "dicte", "base")


def test_residual_reconstruction_decoder_starts_from_the_reference():
    """With `residual`, the stage-0 renderer predicts reference + correction: a zero output conv
    returns the reference exactly, whatever the latents (the demo's stage 0 uses it)."""
    from flax import nnx

    from emotivetalk_jax.models.face_encoders import ReconstructionDecoder
    from emotivetalk_jax.models.vaid_variants import DecoderConfig, get_vaid_variant

    assert get_vaid_variant("demo").decoder.residual and not get_vaid_variant("emotivetalk_512").decoder.residual
    dec = ReconstructionDecoder(DecoderConfig(channels=(8, 16), residual=True), 4, 3, rngs=nnx.Rngs(0))
    dec.conv_out.kernel[...] = jnp.zeros_like(dec.conv_out.kernel[...])
    dec.conv_out.bias[...] = jnp.zeros_like(dec.conv_out.bias[...])
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    keep = jnp.array([True, False])
    out = dec(x, jnp.ones((2, 4)), jnp.ones((2, 3)), keep, keep)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
    plain = ReconstructionDecoder(DecoderConfig(channels=(8, 16)), 4, 3, rngs=nnx.Rngs(0))
    plain.conv_out.kernel[...] = jnp.zeros_like(plain.conv_out.kernel[...])
    plain.conv_out.bias[...] = jnp.zeros_like(plain.conv_out.bias[...])
    assert float(jnp.abs(plain(x, jnp.ones((2, 4)), jnp.ones((2, 3)), keep, keep)).max()) == 0.0


def test_region_weight_known_answer():
    from emotivetalk_jax.diffusion.ethd_loss import region_weight

    lip = jnp.asarray([1.0, 0.0, 0.0, 0.0]).reshape(1, 2, 2, 1)
    face = jnp.asarray([1.0, 1.0, 0.0, 0.0]).reshape(1, 2, 2, 1)
    assert region_weight(lip, face) is None
    np.testing.assert_allclose(np.ravel(region_weight(lip, face, 4.0, 2.0)), [4.0, 2.0, 1.0, 1.0])
    np.testing.assert_allclose(np.ravel(region_weight(lip, face, 1.0, 3.0)), [1.0, 3.0, 1.0, 1.0])


def test_vae_reconstruction_and_edge_l1_known_answers():
    from emotivetalk_jax.train.stages.vae import edge_l1, reconstruction_l1

    x = jnp.zeros((1, 2, 2, 1))
    rec = jnp.asarray([1.0, 0.0, 0.0, 3.0]).reshape(1, 2, 2, 1)
    w = jnp.asarray([4.0, 1.0, 1.0, 1.0]).reshape(1, 2, 2, 1)
    np.testing.assert_allclose(float(reconstruction_l1(rec, x)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(reconstruction_l1(rec, x, w)), (4 + 3) / 7, rtol=1e-6)
    # differences: along y (axis 1) [-1, 3], along x (axis 2) [-1, 3]: mean |.| 2 each
    np.testing.assert_allclose(float(edge_l1(rec, x)), 2.0, rtol=1e-6)
    # weighted by the first pixel of each difference: y: (4 * 1 + 1 * 3) / 5, x: the same
    np.testing.assert_allclose(float(edge_l1(rec, x, w)), 7 / 5, rtol=1e-6)
    assert float(edge_l1(x + 0.5, x)) == 0.0  # a uniform shift has no edges


@pytest.mark.slow
def test_stage2_gate_reads_expression_transfer():
    """gate/expr_transfer is exactly 0 for a fresh ETHD (the EDI and temporal expression output
    kernels start at zero, so e_dri changes nothing), pools <dD, dz> / |dz|^2 over the clips that
    are not neutral (and per emotion), and its batch pairs each window with the same frames at a
    neutral expression."""
    from flax import nnx

    from emotivetalk_jax.train import gates
    from emotivetalk_jax.train.commands import load_config
    from emotivetalk_jax.train.stages import build_stage

    c = load_config("configs/train.py:stage=ethd,variant=tiny")
    c.gate_clips, c.compiler_options = 3, {"xla_backend_optimization_level": 0}
    stage = build_stage(c)
    g = stage.gate(stage.model(stage.init_params, stage.init_rest), nnx.merge(stage.frozen_graphdef,
                                                                                stage.frozen_state))
    assert {"gate/x0_lip_corr", "gate/x0_emotion_acc", "gate/x0_psnr"} <= set(g)
    assert g["gate/expr_transfer"] == 0.0

    _, ev = gates.stage_clips(c, 64)
    emotional = [cl.emotion != "neutral" for cl in ev.clips[:3]]
    assert any(emotional) and not all(emotional)
    seen = {}

    def fake(batch):  # emotional windows: dot = 3 |dz|^2; neutral ones (left out of the pool): 100
        seen.update(batch)
        norm = np.arange(1.0, len(batch["frames"]) + 1)
        return norm * np.where(np.repeat(emotional, 2), 3.0, 100.0), norm

    out = gates.expression_transfer_gate(fake, stage.audio_encoder, ev, frames=4, context=2, latent=8, windows=2,
                                         clips=3)
    np.testing.assert_allclose(out["gate/expr_transfer"], 3.0, rtol=1e-12)
    per = {k.rsplit("/", 1)[1]: v for k, v in out.items() if k.startswith("gate/expr_transfer/")}
    assert set(per) == {cl.emotion for cl, e in zip(ev.clips[:3], emotional) if e}
    np.testing.assert_allclose(list(per.values()), 3.0, rtol=1e-12)
    assert seen["neutral_frames"].shape == seen["frames"].shape == (6, 4, 64, 64, 3)
    for i, e in enumerate(np.repeat(emotional, 2)):  # expression changes pixels only where the clip has one
        assert (seen["neutral_frames"][i] != seen["frames"][i]).any() == e


def test_scaled_updates_multiply_the_update_and_keep_the_state():
    import optax

    from emotivetalk_jax.train.optim import lr_scales, scaled_updates

    params = {"unet": {"w": jnp.ones(3)}, "edi": {"w": jnp.ones(2)}}
    scales = lr_scales(params, lambda path: 10.0 if "edi" in path else 1.0)
    assert scales == {"unet": {"w": 1.0}, "edi": {"w": 10.0}}
    assert lr_scales(params, lambda path: 1.0) is None
    base = optax.adam(0.1)
    tx = scaled_updates(base, scales)
    grads = {"unet": {"w": jnp.full(3, 0.5)}, "edi": {"w": jnp.full(2, -2.0)}}
    state = tx.init(params)
    assert jax.tree.structure(state) == jax.tree.structure(base.init(params))  # checkpoints stay loadable
    ref, _ = base.update(grads, base.init(params), params)
    out, _ = tx.update(grads, state, params)
    np.testing.assert_allclose(out["unet"]["w"], ref["unet"]["w"], rtol=0)
    np.testing.assert_allclose(out["edi"]["w"], 10 * ref["edi"]["w"], rtol=1e-6)  # adam's first step: -lr sign(g)
    np.testing.assert_allclose(out["edi"]["w"], 1.0, rtol=1e-5)


def test_ethd_new_params_lr_scale_marks_exactly_the_ethd_additions():
    from flax import nnx

    from emotivetalk_jax.models.ethd import NEW_PARAMS
    from emotivetalk_jax.train.commands import load_config
    from emotivetalk_jax.train.optim import lr_scales
    from emotivetalk_jax.train.stages import build_stage

    c = load_config("configs/train.py:stage=ethd,variant=tiny", ["--config.new_params_lr_scale=8"])
    stage = build_stage(c, abstract=True)
    scales = lr_scales(stage.init_params["main"], stage.lr_scale)
    model = stage.model(stage.init_params, stage.init_rest)
    new = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, NEW_PARAMS))}
    flat = {".".join(str(getattr(k, "key", k)) for k in p): v for p, v in jax.tree_util.tree_leaves_with_path(scales)}
    assert new and {k for k, v in flat.items() if v == 8.0} == new
    assert {v for k, v in flat.items() if k not in new} == {1.0}
    assert build_stage(load_config("configs/train.py:stage=ethd,variant=tiny"), abstract=True).lr_scale is None
    with pytest.raises(ValueError, match="new_params_lr_scale must be > 0"):
        build_stage(load_config("configs/train.py:stage=ethd,variant=tiny", ["--config.new_params_lr_scale=0"]),
                    abstract=True)


def test_expression_consistency_known_answers():
    """0 for the clip's own expression, 1 for the neutral portrait's, clips with a dropped
    expression condition left out, and a floor on an all-neutral batch's denominator."""
    from emotivetalk_jax.diffusion.ethd_loss import expression_consistency

    e_ref = jnp.asarray([[0.0, 0.0], [1.0, 1.0]])
    e_v = jnp.asarray([[[3.0, 4.0]] * 2, [[1.0, 2.0]] * 2])  # (B=2, F=2, De=2); |e_ref - e_v|^2: 25, 1 per frame
    keep = jnp.asarray([True, True])
    assert float(expression_consistency(e_v, e_v, e_ref, keep)) == 0.0
    np.testing.assert_allclose(float(expression_consistency(jnp.broadcast_to(e_ref[:, None], e_v.shape), e_v,
                                                            e_ref, keep)), 1.0, rtol=1e-6)
    half = (e_v + e_ref[:, None]) / 2  # half the expression: a quarter of the squared error
    np.testing.assert_allclose(float(expression_consistency(half, e_v, e_ref, keep)), 0.25, rtol=1e-6)
    wrong_second = e_v.at[1].add(10.0)  # the dropped clip's error does not count
    assert float(expression_consistency(wrong_second, e_v, e_ref, jnp.asarray([True, False]))) == 0.0
    neutral = jnp.broadcast_to(e_ref[:1, None], (1, 2, 2)) + 1.0  # e_v = e_ref + 1 on a portrait with |e_v|^2 = 2
    # denominator max(|e_ref - e_v|^2 = 4, 1% of |e_v|^2 = 0.04): the floor only guards a ~0
    np.testing.assert_allclose(float(expression_consistency(neutral + 1.0, neutral, e_ref[:1], keep[:1])), 1.0,
                               rtol=1e-6)
    same = jnp.broadcast_to(e_ref[1:, None], (1, 2, 2))  # e_v == e_ref: den = 1% of |e_v|^2 = 0.04 (+ 1e-6)
    np.testing.assert_allclose(float(expression_consistency(same + 1.0, same, e_ref[1:], keep[:1])),
                               4 / (0.04 + 1e-6), rtol=1e-6)


@pytest.mark.slow
def test_ethd_expression_loss_adds_the_decoded_clips_expression_error():
    """`expression_loss_weight` > 0: the stage's loss gets the frozen models, decodes D, reads its
    expression and adds w * expression_consistency to the x0 loss; the term has a gradient in
    the backbone; 0 leaves the loss and the loss's signature as they were; < 0 is refused."""
    from flax import nnx

    from configs.train import get_config
    from emotivetalk_jax.train.inputs import make_dataset
    from emotivetalk_jax.train.stages import build_stage

    cfg = get_config("stage=ethd,variant=tiny")
    cfg.e_a_steps, cfg.expression_loss_weight = 1, 0.5
    stage = build_stage(cfg)
    assert stage.loss_reads_frozen
    data = get_config("variant=tiny").data
    data.num_clips = 2
    batch = next(iter(make_dataset(data, stage.data, batch_size=2, seed=0, audio_encoder=stage.audio_encoder)))
    groups = list(stage.groups)

    @jax.jit
    def run(params, frozen_state, batch):
        frozen = nnx.merge(stage.frozen_graphdef, frozen_state)
        inp = stage.prepare(frozen, batch, jax.random.key(0))

        def expr(p):  # the term's value, with the whole loss alongside
            model = stage.model({**params, groups[0]: p}, stage.init_rest)
            l, a = stage.losses["main"](model, inp, jax.random.key(1), {}, frozen)
            return a["loss_expr"], (l, a)

        (_, (l, a)), g = jax.value_and_grad(expr, has_aux=True)(params[groups[0]])
        return l, a, optax.global_norm(g)

    import optax

    loss, a, gnorm = run(stage.init_params, stage.frozen_state, batch)
    assert np.isfinite(float(a["loss_expr"])) and float(a["loss_expr"]) > 0
    np.testing.assert_allclose(float(loss), float(a["loss_x0"]) + 0.5 * float(a["loss_expr"]), rtol=1e-5)
    assert float(gnorm) > 0
    cfg.expression_loss_weight = 0.0
    assert not build_stage(cfg, abstract=True).loss_reads_frozen
    cfg.expression_loss_weight = -1.0
    with pytest.raises(ValueError, match="expression_loss_weight must be >= 0"):
        build_stage(cfg, abstract=True)
