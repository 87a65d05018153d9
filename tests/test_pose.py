"""Head pose (issue 30): the similarity fit's known answers, the synthetic domain's head motion
(the old domain unchanged, per-clip levels, the pose read back from landmarks and from pixels),
the pose scores on ground truth, the pose and motion a training window carries, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from emotivetalk_jax import validate
from emotivetalk_jax.data import measure
from emotivetalk_jax.data import pose as P
from emotivetalk_jax.data.synthetic import MOVING_HEADS, SynthConfig, SyntheticDomain, domain_config


def _face(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(10, 50, (68, 2))


def test_a_similarity_applied_to_landmarks_is_recovered_exactly():
    ref = _face()
    pivot = ref[P.PIVOT].mean(0)
    poses = np.array([[7.0, 0.05, -0.03, 1.1], [-12.5, 0.0, 0.02, 0.9], [0.0, 0.0, 0.0, 1.0]], np.float32)
    lms = np.stack([P.apply_pose(ref, p, pivot, 64) for p in poses])
    lms[:, 48:68] += np.random.default_rng(1).normal(0, 2.0, (3, 20, 2))  # an open mouth is not head motion
    lms[:, 17:27] += np.random.default_rng(2).normal(0, 2.0, (3, 10, 2))  # nor raised brows
    np.testing.assert_allclose(P.pose_from_landmarks(lms, ref, 64), poses, atol=1e-5)
    # relative poses compose by subtraction (about the reference frame's pivot)
    np.testing.assert_allclose(P.pose_from_landmarks(lms[:1], lms[1], 64)[0], P.relative_pose(poses[0], poses[1]),
                               atol=1e-5)
    theta, scale, t = P.similarity_fit(ref, ref * 2.0 + 3.0)
    assert abs(theta) < 1e-12 and abs(scale - 2.0) < 1e-12 and np.allclose(t, 3.0)


def test_motion_level_and_playing_a_short_pose_to_length():
    t = np.arange(100) / 25
    pose = np.stack([4 * np.sin(t), 0.02 * np.sin(2 * t), 0.01 * np.cos(t), np.ones_like(t)], -1)
    level = P.motion_level(pose)
    assert P.motion_level(np.tile(P.STILL, (50, 1))) == 0.0 and level > 0
    twice = pose.copy()
    twice[:, :3] *= 2
    assert P.motion_level(twice) == pytest.approx(2 * level, rel=1e-9)
    assert P.motion_level(pose + np.array([3.0, 0.1, -0.1, 0.0])) == pytest.approx(level, rel=1e-9)  # offsets
    np.testing.assert_array_equal(P.fit_length(np.arange(3)[:, None], 8)[:, 0], [0, 1, 2, 1, 0, 1, 2, 1])
    np.testing.assert_array_equal(P.fit_length(np.arange(5)[:, None], 3)[:, 0], [0, 1, 2])
    np.testing.assert_allclose(P.motion_bucket([0.0, 1.0, 2.0, 9.0]), [0.0, 127.0, 254.0, 255.0])


def test_the_old_domain_is_unchanged_and_levels_move_only_the_head():
    """SynthConfig() draws exactly what it drew before head-motion levels existed (values from
    the commit before them); levels come from their own stream, so only the motion changes."""
    c = SyntheticDomain(0, SynthConfig()).clip(3, "test")
    assert c.num_frames == 95 and c.motion_level == 1.0
    np.testing.assert_allclose(c.states[[0, 10, 40]][:, 6:9], [[-0.010007027, -0.006631539, -0.9590411],
                                                               [-0.009055816, -0.006803069, 0.8932471],
                                                               [0.007779361, 0.003074232, -1.6889547]], rtol=1e-6)
    moving = SyntheticDomain(0, domain_config(1.0, True)).clip(3, "test")
    np.testing.assert_array_equal(moving.states[:, :6], c.states[:, :6])
    np.testing.assert_array_equal(moving.audio, c.audio)
    lo, hi = MOVING_HEADS["head_motion_levels"]
    assert lo <= moving.motion_level <= hi
    amp = np.array(MOVING_HEADS["head_motion_amplitude"]) / np.array(SynthConfig().head_motion_amplitude)
    np.testing.assert_allclose(moving.states[:, 6:9], c.states[:, 6:9] * amp * moving.motion_level, rtol=1e-5,
                               atol=1e-7)
    levels = [SyntheticDomain(0, domain_config(1.0, True)).clip(i, "test").motion_level for i in range(8)]
    assert len(set(levels)) == 8


def test_pose_read_back_on_moving_synthetic_clips():
    """From the ground-truth landmarks (`data.pose`) and from the pixels (`measure.read_pose`), the
    rendered pose is read back at r >= 0.98 per moving component; the pose scores of the ground
    truth scored as if generated are ~1."""
    from emotivetalk_jax.eval.pose_scores import pose_scores

    domain = SyntheticDomain(0, domain_config(1.0, True))
    clips = [domain.clip(i, "test") for i in range(3)]
    truth = [c.pose() for c in clips]
    fitted = [P.pose_from_landmarks(c.landmarks(), c.portrait_landmarks(), c.size) for c in clips]
    read = [measure.read_pose(c.frames(), c.identity) for c in clips]
    for got in (fitted, read):
        r = [np.corrcoef(np.concatenate(truth)[:, k], np.concatenate(got)[:, k])[0, 1] for k in range(3)]
        assert min(r) >= 0.98, r
    scores = pose_scores(read, truth, driving=[P.relative_pose(t, t[0]) for t in truth])
    assert min(scores["pose_corr"][k] for k in ("roll", "dx", "dy")) >= 0.98, scores
    assert scores["pose_corr"]["scale"] is None and scores["pose_std_ratio"]["scale"] is None  # no scale motion
    for k in ("roll", "dx", "dy"):
        assert 0.95 <= scores["pose_std_ratio"][k] <= 1.05, scores
    still = pose_scores([np.tile(np.nanmean(x, 0), (len(x), 1)) for x in read], truth)
    assert max(still["pose_std_ratio"][k] for k in ("roll", "dx", "dy")) < 1e-3


def test_a_training_window_carries_its_pose_relative_to_the_reference_and_the_clips_motion():
    from emotivetalk_jax.data.pipeline import ClipWindow

    clip = SyntheticDomain(0, domain_config(1.0, True)).clip(2, "train")
    ex = ClipWindow(frames=6, size=32, pose=True, pixels=False, reference_neutral=1.0).random_map(
        clip, np.random.default_rng(0))
    idx = int(ex["start"]) + np.arange(6)
    np.testing.assert_allclose(ex["pose"], clip.pose()[idx], atol=1e-7)  # the portrait is the still pose
    assert ex["motion"] == pytest.approx(P.motion_level(clip.pose()))
    other = ClipWindow(frames=6, size=32, pose=True, pixels=False).random_map(clip, np.random.default_rng(0))
    assert not np.allclose(other["pose"], clip.pose()[int(other["start"]) + np.arange(6)])  # another frame's
    plain = ClipWindow(frames=6, size=32, pixels=False).random_map(clip, np.random.default_rng(0))
    assert "pose" not in plain and "motion" not in plain


def test_bad_pose_inputs_give_one_line(tmp_path):
    from emotivetalk_jax.data import video

    errors = []
    for call in (lambda: P.pose_from_landmarks(np.zeros((3, 5, 2)), _face(), 64),
                 lambda: P.pose_from_landmarks(np.full((1, 68, 2), np.nan), _face(), 64),
                 lambda: P.check_pose(np.zeros((4, 3))),
                 lambda: P.check_pose(np.zeros((4, 4))),  # scale 0
                 lambda: P.check_motion_level(1.0, conditioning=False),
                 lambda: P.driving_pose(np.zeros((2, 4)), "x.mp4", fps=25, supported=True),
                 lambda: P.driving_pose(np.tile(P.STILL, (3, 1)), fps=25, supported=False),
                 lambda: P.driving_pose(video=tmp_path / "missing.mp4", fps=25, supported=True)):
        with pytest.raises(P.PoseError) as e:
            call()
        errors.append(str(e.value))
    with pytest.raises(validate.NumberError, match="--motion must be <= 2.0"):
        P.check_motion_level(2.5, conditioning=True)
    assert P.check_motion_level(None, conditioning=False) is None
    flat = np.full((8, 64, 64, 3), 90, np.uint8)
    video.write_mp4(tmp_path / "wall.mp4", flat)
    with pytest.raises(P.PoseError, match="no face found in the pose video") as e:
        P.driving_pose(video=tmp_path / "wall.mp4", fps=25, supported=True)
    errors.append(str(e.value))
    assert all("\n" not in m and m for m in errors)
    with pytest.warns(validate.InputWarning, match="plays forward and back"):
        assert P.play_to(np.tile(P.STILL, (3, 1)), 5).shape == (5, 4)


def test_stage2_motion_knob_and_pose_condition():
    """Stage 2 with motion_conditioning and pose_condition: each clip's bucket is 127 x its motion / motion_typical (clipped to [0, 255]) while the
    gates' batches (no motion) keep 127, the pose passes through, and off is today's constant;
    motion_typical 0 is measured: the median over the training clips."""
    from configs.train import get_config
    from emotivetalk_jax.train.stages import motion_typical
    from emotivetalk_jax.train.stages.ethd import motion_inputs

    c = get_config("stage=ethd,variant=tiny")
    c.motion_conditioning, c.pose_condition, c.motion_typical = True, True, 0.4
    ids = (24, 127, 0.02)
    pose = np.zeros((3, 2, 4), np.float32)
    got, p = motion_inputs({"motion": np.float32([0.0, 0.2, 5.0]), "pose": pose}, ids, 3, 0.4, True)
    np.testing.assert_allclose(got, [[24, 0, 0.02], [24, 63.5, 0.02], [24, 255, 0.02]], rtol=1e-6)
    assert p is pose
    got, p = motion_inputs({"pose": pose}, ids, 3, 0.4, False)  # a gate's batch; the pose condition off
    np.testing.assert_allclose(got, [ids] * 3, rtol=1e-6)
    assert p is None
    c.motion_typical, c.data.moving_heads, c.data.num_clips = 0.0, True, 5
    from emotivetalk_jax.data.pipeline import SyntheticClips
    from emotivetalk_jax.data.synthetic import domain_config

    clips = SyntheticClips(0, "train", 5, domain_config(1.0, True))
    assert motion_typical(c) == pytest.approx(float(np.median([P.motion_level(clips[i].pose()) for i in range(5)])))
    c.data.moving_heads, c.data.head_motion = False, 0.0
    with pytest.raises(ValueError, match="do not move"):
        motion_typical(c)
