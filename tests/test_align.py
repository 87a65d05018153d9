"""Landmark-aligned faces (issue 30 item 2): the warp's known answers, and the face encoders'
opt-in `aligned` (off: exactly as before; on: aligned crops or a clear refusal)."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from emotivetalk_jax.data import align as A
from emotivetalk_jax.data import face as facelib
from emotivetalk_jax.data import pose as P
from emotivetalk_jax.data import synthetic as syn
from emotivetalk_jax.data import synthetic_face as sf
from emotivetalk_jax.models.face_encoders import NEEDS_LANDMARKS, FaceEncoders
from emotivetalk_jax.models.vaid_variants import FaceEncoderConfig

SIZE = 128  # fine enough that the renderer's edge aliasing stays small


def _psnr(a, b) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


@pytest.fixture(scope="module")
def moved():
    """A moving-heads clip's frame at its largest roll, its landmarks, and the same state still."""
    clip = syn.SyntheticDomain(0, syn.domain_config(1.0, True)).clip(3, "test")
    i = int(np.argmax(np.abs(clip.states[:, 8])))
    still = clip.states[i : i + 1].copy()
    still[:, 6:9] = 0.0
    return {"frame": clip.frames(i, i + 1, size=SIZE), "landmarks": clip.landmarks(i, i + 1, size=SIZE),
            "still": sf.render(clip.identity, still, SIZE), "reference": sf.landmarks(clip.identity, still[0], SIZE),
            "roll": float(clip.states[i, 8])}


def _face_region(reference):
    x0, y0, x1, y1 = facelib.face_box(reference).astype(int)
    return slice(max(y0, 0), y1), slice(max(x0, 0), x1)


def test_a_moved_frame_aligned_matches_the_still_render(moved):
    assert abs(moved["roll"]) > 5  # a pose a 128 px frame shows plainly
    region = _face_region(moved["reference"])
    aligned = np.asarray(A.align_faces(moved["frame"].astype(np.float32), moved["landmarks"], moved["reference"]))
    assert _psnr(moved["frame"][0][region], moved["still"][0][region]) < 20  # unaligned: far apart
    assert _psnr(aligned[0][region], moved["still"][0][region]) > 35  # measured 38.4
    assert _psnr(aligned[0], moved["still"][0]) > 35  # the whole frame too (the background is a soft gradient)


def test_undo_pose_is_the_landmark_fit(moved):
    pose = P.pose_from_landmarks(moved["landmarks"], moved["reference"], SIZE)
    by_pose = np.asarray(A.undo_pose(moved["frame"].astype(np.float32), pose, moved["reference"]))
    by_fit = np.asarray(A.align_faces(moved["frame"].astype(np.float32), moved["landmarks"], moved["reference"]))
    assert np.abs(by_pose - by_fit).max() < 0.5  # grey levels: the same warp up to float error


def test_identity_is_exactly_a_no_op(moved):
    x = moved["frame"].astype(np.float32)
    np.testing.assert_array_equal(np.asarray(A.align_faces(x, moved["landmarks"], moved["landmarks"][0])), x)
    np.testing.assert_array_equal(np.asarray(A.undo_pose(x, P.STILL[None], moved["reference"])), x)
    rnd = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    lm = np.stack([A.canonical_landmarks(64)] * 2)
    np.testing.assert_array_equal(np.asarray(jax.jit(A.align_faces)(rnd, lm)), rnd)


def test_similarity_fit_recovers_a_known_pose():
    ref = A.canonical_landmarks(64)
    pivot = ref[P.PIVOT].mean(0)
    poses = np.array([[7.0, 0.05, -0.03, 1.1], [-4.0, -0.02, 0.04, 0.9]], np.float32)
    lms = np.stack([P.apply_pose(ref, p, pivot, 64) for p in poses])
    np.testing.assert_allclose(np.asarray(A.similarity_matrices(lms, ref)), A.pose_matrices(poses, pivot, 64),
                               atol=2e-4)


def test_an_integer_shift_moves_pixels_exactly():
    img = np.random.default_rng(1).uniform(0, 1, (1, 16, 16, 1)).astype(np.float32)
    m = np.array([[[1.0, 0.0, 3.0], [0.0, 1.0, -2.0]]], np.float32)  # out (x, y) reads in (x + 3, y - 2)
    out = np.asarray(A.warp(img, m))
    np.testing.assert_array_equal(out[0, 2:, :13], img[0, :14, 3:])


def test_canonical_face_is_the_synthetic_mean_face():
    np.testing.assert_array_equal(A.CANONICAL, A.synthetic_canonical())
    np.testing.assert_array_equal(P.RIGID, A.RIGID)


# ----------------------------------------------------------------------------- the encoders


def _encoders(aligned: bool) -> FaceEncoders:
    cfg = FaceEncoderConfig(image_size=32, backbone_channels=(8, 16), feature_dim=16, adapter_channels=4, lip_dim=8,
                            expr_dim=4, pool="flatten", aligned=aligned)
    return FaceEncoders(cfg, rngs=nnx.Rngs(0))


def test_encoders_unaligned_ignore_landmarks_bit_for_bit():
    enc = _encoders(False)
    x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (3, 32, 32, 3)), jnp.float32)
    lm = jnp.asarray(np.stack([A.canonical_landmarks(32) + 3.0] * 3))
    np.testing.assert_array_equal(np.asarray(enc.encode_expression(x)), np.asarray(enc.encode_expression(x, lm)))
    np.testing.assert_array_equal(np.asarray(enc.encode_lip(x)), np.asarray(enc.encode_lip(x, lm)))


def test_aligned_encoders_read_the_aligned_crop_and_refuse_without_landmarks():
    enc = _encoders(True)
    plain = nnx.merge(*nnx.split(_encoders(False)))  # the same weights (same seed), aligned off
    x = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
    ref = A.canonical_landmarks(32)
    lm = jnp.asarray(np.stack([P.apply_pose(ref, p, ref[P.PIVOT].mean(0), 32)
                               for p in ([5.0, 0.03, 0.0, 1.0], [-3.0, 0.0, 0.02, 1.05])]))
    np.testing.assert_allclose(np.asarray(enc.encode_expression(x, lm)),
                               np.asarray(plain.encode_expression(A.align_faces(x, lm))), atol=1e-5)
    lead = enc.encode_lip(jnp.stack([x, x]), jnp.stack([lm, lm]))  # leading axes (B, F) as stage 2 passes them
    assert lead.shape == (2, 2, 8)
    with pytest.raises(ValueError, match="landmark-aligned"):
        enc.encode_expression(x)
    assert "68" in NEEDS_LANDMARKS


def test_aligned_is_recorded_and_old_configs_load_unaligned(tmp_path):
    from emotivetalk_jax.emotion.sources import (
        load_expression_encoder,
        save_expression_encoder,
    )

    folder = save_expression_encoder(_encoders(True), tmp_path / "fe")
    meta = json.loads((folder / "config.json").read_text())
    assert meta["config"]["aligned"] is True
    assert load_expression_encoder(folder).cfg.aligned
    old = {k: v for k, v in dataclasses.asdict(_encoders(False).cfg).items() if k != "aligned"}
    assert FaceEncoderConfig(**old).aligned is False  # a bundle saved before the field existed


def test_face_config_follows_the_checkpoint(tmp_path):
    from emotivetalk_jax.emotion.sources import save_expression_encoder
    from emotivetalk_jax.models.vaid_variants import get_vaid_variant
    from emotivetalk_jax.train.commands import load_config
    from emotivetalk_jax.train.stages.frozen import face_config

    v = get_vaid_variant("demo")
    cfg = load_config("configs/train.py:stage=encoders,variant=demo")
    assert face_config(cfg, v).aligned is False
    cfg.face_aligned = True
    assert face_config(cfg, v).aligned is True  # stage 0's own setting
    folder = save_expression_encoder(FaceEncoders(dataclasses.replace(v.face, aligned=True), rngs=nnx.Rngs(0)),
                                     tmp_path / "fe")
    later = load_config("configs/train.py:stage=vaid,variant=demo")
    later.init.face_encoders = str(folder)
    assert face_config(later, v).aligned is True  # later stages: as the checkpoint was trained
    from emotivetalk_jax.pipeline import default_checkpoint

    later.init.face_encoders = str(default_checkpoint() / "face_encoders")
    assert face_config(later, v).aligned is False  # the shipped demo's encoders


def test_emotion_image_needs_landmarks_for_aligned_encoders(tmp_path):
    from PIL import Image

    from emotivetalk_jax.emotion.keywords import EmotionError
    from emotivetalk_jax.emotion.sources import image_condition

    ident = syn.SyntheticDomain(0).identity(3)
    st = sf.neutral_state(1)
    path = tmp_path / "face.png"
    Image.fromarray(sf.render(ident, st, 32)[0]).save(path)
    enc = _encoders(True)
    with pytest.raises(EmotionError, match="landmark-aligned"):
        image_condition(path, enc, detect=False)
    cond = image_condition(path, enc, detect=False, landmarks=sf.landmarks(ident, st[0], 32))
    assert cond.e_cond.shape == (4,) and np.isfinite(cond.e_cond).all()


def test_emotion_video_reads_its_sidecar_landmarks(tmp_path):
    from emotivetalk_jax.emotion.sources import video_expressions

    clip = syn.SyntheticDomain(0, syn.SynthConfig(min_seconds=0.4, max_seconds=0.4, **syn.MOVING_HEADS)).clip(0)
    paths = syn.write_clip(clip, tmp_path, 64)
    enc = _encoders(True)
    e_side, detail = video_expressions(paths["mp4"], enc, detect=False)
    e_given, _ = video_expressions(paths["mp4"], enc, detect=False, landmarks=clip.landmarks(size=64))
    assert e_side.shape == (clip.num_frames, 4) and detail["video_frames"] == clip.num_frames
    # the sidecar's landmarks, rounded to 0.01 px, move the random encoders' e_v by ~1e-2; landmarks
    # 3 px off move it by much more
    np.testing.assert_allclose(e_side, e_given, atol=0.03)
    e_off, _ = video_expressions(paths["mp4"], enc, detect=False, landmarks=clip.landmarks(size=64) + 3.0)
    assert np.abs(e_off - e_given).max() > 0.1


def test_portrait_boxes_may_carry_the_landmarks():
    from emotivetalk_jax.data.portrait import PortraitError, prepare_portrait

    clip = syn.SyntheticDomain(0).clip(0)
    img, lm = clip.portrait(128), clip.portrait_landmarks(128)
    boxes = (facelib.lip_box(lm), facelib.face_box(lm))
    plain = prepare_portrait(img, 64, crop=False, boxes=boxes)
    with_lm = prepare_portrait(img, 64, crop=False, boxes=(*boxes, lm))
    assert plain.landmarks is None
    np.testing.assert_array_equal(plain.image, with_lm.image)  # the same crop either way
    np.testing.assert_allclose(with_lm.landmarks, lm / 2, atol=1e-4)
    with pytest.raises(PortraitError, match="68"):
        prepare_portrait(img, 64, crop=False, boxes=(*boxes, lm[:10]))


# ----------------------------------------------------------------------------- training paths (long)


@pytest.mark.slow
@pytest.mark.long
def test_aligned_stage0_feeds_stage1(tmp_path):
    """Stage 0 with face_aligned (tiny, 2 steps) trains and logs its gates; stage 1 on that workdir
    rebuilds the encoders aligned (from the workdir's config) and runs on the frames' landmarks."""
    from emotivetalk_jax.train import stages as S
    from emotivetalk_jax.train.commands import load_config
    from emotivetalk_jax.train.loop import train

    def run(stage, **init):
        c = load_config(f"configs/train.py:stage={stage},variant=tiny")
        c.total_steps, c.log_every, c.checkpoint.every, c.gate_clips = 2, 1, 2, 2
        c.data.num_clips, c.progress, c.checkpoint.async_save = 4, False, False
        c.data.moving_heads = True
        c.compiler_options = {"xla_backend_optimization_level": 0}
        if stage == "encoders":
            c.face_aligned = True
        else:
            c.frames = 6
        for k, v in init.items():
            c.init[k] = str(v)
        out = train(c, tmp_path / stage)
        rows = [json.loads(line) for line in (tmp_path / stage / "metrics.jsonl").read_text().splitlines()]
        return c, out, {k: v for r in rows for k, v in r.items() if k.startswith("gate/")}

    _, out0, g0 = run("encoders")
    assert out0["status"] == "done" and np.isfinite(out0["metrics"]["loss"])
    assert {"gate/l_v_r", "gate/e_v_acc"} <= set(g0)
    c1, out1, _ = run("vaid", face_encoders=tmp_path / "encoders")
    assert out1["status"] == "done" and np.isfinite(out1["metrics"]["loss"])
    from emotivetalk_jax.models.vaid_variants import get_vaid_variant

    assert S.face_encoders(c1, get_vaid_variant("tiny"), 0).cfg.aligned


@pytest.mark.slow
@pytest.mark.long
def test_stage2_cache_reads_aligned_encoders_with_landmarks(tmp_path):
    """Stage 2 on aligned face encoders: the frozen cache's e_v (each clip's landmarks) equals the
    per-step e_v of the same frames, and a cached batch without landmarks is not silently unaligned."""
    from configs.train import get_config
    from emotivetalk_jax.data import frozen_cache
    from emotivetalk_jax.data.audio_cache import source_features
    from emotivetalk_jax.data.pipeline import (
        ClipWindow,
        SyntheticClips,
        clip_frames,
        clip_landmarks,
    )
    from emotivetalk_jax.emotion.sources import save_expression_encoder
    from emotivetalk_jax.models.vaid_variants import get_vaid_variant
    from emotivetalk_jax.train.stages import build_stage

    face = dataclasses.replace(get_vaid_variant("tiny").face, aligned=True)
    folder = save_expression_encoder(FaceEncoders(face, rngs=nnx.Rngs(5)), tmp_path / "fe")
    cfg = get_config("stage=ethd,variant=tiny")
    cfg.frozen_cache, cfg.e_a_steps = True, 1
    cfg.init.face_encoders = str(folder)
    stage = build_stage(cfg)
    assert stage.frozen_outputs.landmarks
    source = SyntheticClips(0, "train", 2, syn.SynthConfig(min_seconds=0.2, max_seconds=0.3, **syn.MOVING_HEADS))
    feats = source_features(stage.audio_encoder, source)
    with pytest.raises(ValueError, match="clip_landmarks"):
        frozen_cache.source_outputs(stage.frozen_outputs, source, feats, clip_frames=clip_frames)
    frozen = frozen_cache.source_outputs(stage.frozen_outputs, source, feats, clip_frames=clip_frames,
                                         clip_landmarks=clip_landmarks)
    d = stage.data
    window = ClipWindow(frames=d["frames"], size=d["size"], mask_sizes=d["mask_sizes"],
                        audio_context=d["audio_context"], features=feats, frozen=frozen)
    ex = window.random_map(source[0], np.random.default_rng(0))
    batch = {k: np.asarray(v)[None] for k, v in ex.items()}
    prepare = jax.jit(lambda fs, b: stage.prepare(nnx.merge(stage.frozen_graphdef, fs), b, jax.random.key(0))["eb"])
    cached = prepare(stage.frozen_state, batch)
    fresh = prepare(stage.frozen_state, {k: v for k, v in batch.items() if not k.startswith("frozen_")})
    np.testing.assert_allclose(cached.e_v, fresh.e_v, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="landmark-aligned"):
        prepare(stage.frozen_state, {k: v for k, v in batch.items() if not k.startswith("frozen_")
                                     and k != "landmarks"})
