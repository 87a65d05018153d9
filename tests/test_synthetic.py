"""Synthetic talking-face domain: determinism, splits, exact measurement, audio probes."""

import json

import numpy as np
import pytest

from emotivetalk_jax.data import measure as M
from emotivetalk_jax.data import synthetic_face as sf
from emotivetalk_jax.data.synthetic import SynthConfig, SyntheticDomain, clip_from_ground_truth, synth_main
from emotivetalk_jax.data.synthetic_speech import EMOTIONS


def test_clip_is_deterministic_and_shapes_align():
    a, b = SyntheticDomain(3).clip(5), SyntheticDomain(3).clip(5)
    np.testing.assert_array_equal(a.audio, b.audio)
    np.testing.assert_array_equal(a.states, b.states)
    np.testing.assert_array_equal(a.frames(0, 3), b.frames(0, 3))
    assert len(a.audio) == 640 * a.num_frames
    assert a.frames(0, 2, size=64).shape == (2, 64, 64, 3)
    assert a.landmarks(0, 2).shape == (2, 68, 2)
    c = SyntheticDomain(3).clip(6)
    assert not np.array_equal(a.audio[:1000], c.audio[:1000])


def test_splits_hold_out_identities_and_utterances():
    d = SyntheticDomain(0)
    train_ids = {d.clip(i, "train").identity_id for i in range(20)}
    test_ids = {d.clip(i, "test").identity_id for i in range(20)}
    seen_ids = {d.clip(i, "test_seen").identity_id for i in range(20)}
    assert train_ids.isdisjoint(test_ids)
    assert seen_ids <= set(d.identity_ids("train"))
    assert d.clip(0, "train").phones != d.clip(0, "test_seen").phones


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="unknown split"):
        SyntheticDomain(0).clip(0, "val")
    with pytest.raises(ValueError, match="frame size"):
        sf.render(SyntheticDomain(0).identity(0), sf.neutral_state(1), 8)
    with pytest.raises(ValueError, match="unknown emotions"):
        SynthConfig(emotions=("bored",))
    with pytest.raises(ValueError, match="--size"):
        synth_main("/tmp/unused_synth", 1, size=63)


def test_landmarks_follow_dlib_layout():
    c = SyntheticDomain(1).clip(2)
    lm = c.portrait_landmarks(128)
    assert lm[0, 0] < lm[8, 0] < lm[16, 0]  # jaw: image-left ear, chin, image-right ear
    assert lm[8, 1] == lm[:17, 1].max()  # chin lowest jaw point
    assert lm[36, 0] < lm[39, 0] < lm[42, 0] < lm[45, 0]  # eye corners left to right
    assert lm[17:27, 1].max() < lm[36:48, 1].min()  # brows above eyes
    assert lm[48, 0] < lm[51, 0] < lm[54, 0] and lm[51, 1] < lm[57, 1]  # mouth corners, top/bottom
    assert (lm >= 0).all() and (lm < 128).all()


def _sample_frames(size, clips=40, per_clip=3, seed=0):
    d = SyntheticDomain(seed)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(clips):
        c = d.clip(i, "train" if i % 2 else "test")
        for f in rng.choice(c.num_frames, per_clip, replace=False):
            out.append((c, int(f), c.frames(f, f + 1, size=size)[0]))
    return out


@pytest.mark.parametrize("size", [64, 128])
def test_measurement_recovers_ground_truth(size):
    rows = _sample_frames(size)
    meas = [M.measure_frame(img, c.identity) for c, _, img in rows]
    gt = np.stack([c.states[f] for c, f, _ in rows])
    got = {k: np.array([m[k] for m in meas]) for k in M.MEASURE_KEYS}
    r_open = np.corrcoef(got["opening"], gt[:, 0])[0, 1]
    r_width = np.corrcoef(got["width"], gt[:, 1])[0, 1]
    assert r_open >= 0.98, r_open
    assert r_width >= 0.95, r_width
    pred, _ = M.classify_expression(M.expression_vector(got))
    truth = np.array([c.emotion_id for c, _, _ in rows])
    acc = (pred == truth).mean()
    assert acc >= 0.98, (acc, [(EMOTIONS[t], EMOTIONS[p]) for t, p in zip(truth, pred) if t != p])


def test_measurement_survives_blur_and_noise():
    """Generated frames are blurry and noisy: the scorer must still read them (128 px)."""
    rng = np.random.default_rng(0)
    rows = _sample_frames(128, clips=24, per_clip=2, seed=3)
    k = np.array([0.25, 0.5, 0.25])
    for degrade in (
        lambda im: np.apply_along_axis(lambda v: np.convolve(v, k, "same"), 0,
                                       np.apply_along_axis(lambda v: np.convolve(v, k, "same"), 1, im.astype(float))),
        lambda im: im + rng.normal(0, 8, im.shape),
    ):
        meas = [M.measure_frame(np.clip(degrade(img), 0, 255).astype(np.uint8), c.identity) for c, _, img in rows]
        got = {key: np.array([m[key] for m in meas]) for key in M.MEASURE_KEYS}
        gt = np.array([c.states[f, 0] for c, f, _ in rows])
        assert np.corrcoef(got["opening"], gt)[0, 1] >= 0.98
        pred, _ = M.classify_expression(M.expression_vector(got))
        assert (pred == np.array([c.emotion_id for c, _, _ in rows])).mean() >= 0.95


def test_measurement_refuses_wrong_frames():
    ident = SyntheticDomain(0).identity(0)
    with pytest.raises(M.MeasureError):
        M.measure_frame(np.zeros((64, 64, 3), np.uint8), ident)
    with pytest.raises(M.MeasureError):
        M.measure_frame(np.zeros((64, 64), np.uint8), ident)


def test_audio_carries_lip_signal_on_held_out_clips():
    d = SyntheticDomain(0)

    def data(split, n):
        cs = [d.clip(i, split) for i in range(n)]
        return (np.concatenate([M.audio_frame_features(c.audio, c.num_frames) for c in cs]),
                np.concatenate([c.states[:, 0] for c in cs]))

    xtr, ytr = data("train", 40)
    xte, yte = data("test", 16)
    w = M.ridge_fit(xtr, ytr, 10.0)
    r = np.corrcoef(M.ridge_predict(w, xte)[:, 0], yte)[0, 1]
    assert r >= 0.8, r


@pytest.mark.slow
def test_emotion_recoverable_from_prosody():
    d = SyntheticDomain(0, SynthConfig(min_seconds=2.0, max_seconds=3.0))

    def data(split, n):
        cs = [d.clip(i, split) for i in range(n)]
        return np.stack([M.prosody_features(c.audio) for c in cs]), np.array([c.emotion_id for c in cs])

    ptr, etr = data("train", 96)
    pte, ete = data("test", 40)
    mu, sd = ptr.mean(0), ptr.std(0) + 1e-6
    w = M.ridge_fit((ptr - mu) / sd, np.eye(8)[etr], 1.0)
    acc = (M.ridge_predict(w, (pte - mu) / sd).argmax(-1) == ete).mean()
    assert acc >= 0.3, acc  # chance is 0.125


def test_synth_main_writes_clips_with_audio_and_ground_truth(tmp_path):
    from emotivetalk_jax.data import video

    out = synth_main(tmp_path, 2, seed=4, size=64, progress=False)
    assert out["clips"] == 2
    name = "train_4_000000"
    for ext in ("mp4", "png", "wav", "json"):
        assert (tmp_path / f"{name}.{ext}").is_file()
    assert video.probe(tmp_path / f"{name}.mp4").has_audio
    gt = json.loads((tmp_path / f"{name}.json").read_text())
    ident, states = clip_from_ground_truth(gt)
    frames = video.read_frames(tmp_path / f"{name}.mp4")
    assert len(frames) == gt["num_frames"] == len(states)
    assert np.asarray(gt["landmarks"]).shape == (len(states), 68, 2)
    got = M.measure_video(frames, ident)  # measurement survives H.264
    assert np.corrcoef(got["opening"], states[:, 0])[0, 1] > 0.97
