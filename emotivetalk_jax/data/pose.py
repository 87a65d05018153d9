"""Head pose from 68 landmarks: a similarity fit (Umeyama) of each frame to a reference.

A pose is the similarity transform that carries the reference face onto the frame's face,
written about a pivot (the mean of the reference's nose-bridge points 27..30, near the
head's centre):

    T(x) = scale * R(roll) (x - pivot) + pivot + (dx, dy) * size

so `pose[f] = (roll, dx, dy, scale)` (`POSE_KEYS`): roll in degrees (the image's y axis points
down, so a positive roll turns the face clockwise on screen, as `synthetic_face` renders
it), dx / dy the pivot's shift as fractions of the image side, scale a ratio (1: the
reference's size). The fit uses the landmarks that expression does not move (`RIGID`: the
upper jaw line, the nose, the four eye corners), so an open mouth or raised brows do not read
as head motion.

Poses against one reference compose by subtraction (`relative_pose`): the pose of frame i
relative to frame r is (roll_i - roll_r, d_i - d_r, scale_i / scale_r) about frame r's pivot.

`motion_level` is one number per clip: the RMS of its pose about the clip's mean, in
face-relative units (roll in radians, shifts in face half-widths, log scale), what stage 2's
motion knob reads. `pose_from_video` reads a driving video's pose relative to its first frame.

Shapes: landmarks (F, 68, 2) pixel (x, y); reference (68, 2); pose (F, 4).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from emotivetalk_jax import validate
from emotivetalk_jax.models.face_align import RIGID

POSE_KEYS = ("roll", "dx", "dy", "scale")
# RIGID (imported): the points a pose is fitted on, which the aligned face encoders align by too.
PIVOT = slice(27, 31)
# A face's half-width as a fraction of the image: `prepare` crops 1.8 x the face box, the
# synthetic domain draws 0.25-0.31. The unit of shifts in `motion_level`.
FACE_HALF_WIDTH = 0.28
STILL = np.array([0.0, 0.0, 0.0, 1.0], np.float32)  # the pose of the reference itself
# SVD's motion bucket (added_time_ids[1]) of a clip at the data's typical motion level, and the
# largest: a motion LEVEL (1 = typical, 0 = still) is the bucket TYPICAL_BUCKET x LEVEL.
TYPICAL_BUCKET, MAX_BUCKET = 127.0, 255.0
MAX_LEVEL = 2.0  # bucket 254


class PoseError(validate.InputError):
    """Landmarks, a pose sequence or a video from which no pose can be read; one-line message."""


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Least-squares similarity dst ~ scale R(theta) src + t (Umeyama 1991): (theta rad, scale, t (2,)).

    src, dst (N, 2), N >= 2 distinct points."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    var = (a * a).sum()
    if not var > 1e-12:
        raise PoseError("the reference landmarks are all at one point; no pose can be fitted")
    # for 2D the optimal rotation has a closed form: atan2 of the cross / dot sums
    dot = (a * b).sum()
    cross = (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum()
    theta = float(np.arctan2(cross, dot))
    scale = float(np.hypot(dot, cross) / var)
    c, s = np.cos(theta), np.sin(theta)
    t = md - scale * (np.array([[c, -s], [s, c]]) @ ms)
    return theta, scale, t


def _check_landmarks(lm: np.ndarray, what: str) -> np.ndarray:
    lm = np.asarray(lm, np.float64)
    if lm.ndim < 2 or lm.shape[-2:] != (68, 2):
        raise PoseError(f"{what} must be 68 (x, y) landmarks per face, got shape {lm.shape}")
    if not np.isfinite(lm).all():
        raise PoseError(f"{what} hold non-finite values")
    return lm


def pose_from_landmarks(landmarks: np.ndarray, reference: np.ndarray, size: float,
                        points: np.ndarray = RIGID) -> np.ndarray:
    """Per-frame pose (F, 4) of `landmarks` (F, 68, 2) relative to `reference` (68, 2), in an
    image `size` pixels wide (see the module docstring)."""
    lms = _check_landmarks(landmarks, "landmarks")
    ref = _check_landmarks(reference, "reference landmarks")
    if lms.ndim != 3 or ref.ndim != 2:
        raise PoseError(f"need landmarks (F, 68, 2) and a reference (68, 2), got {lms.shape} and {ref.shape}")
    if not size > 0:
        raise PoseError(f"image size must be > 0, got {size}")
    pivot = ref[PIVOT].mean(0)
    out = np.empty((len(lms), 4), np.float32)
    for i, lm in enumerate(lms):
        theta, scale, t = similarity_fit(ref[points], lm[points])
        c, s = np.cos(theta), np.sin(theta)
        moved = scale * (np.array([[c, -s], [s, c]]) @ pivot) + t  # T(pivot)
        out[i] = (np.degrees(theta), *((moved - pivot) / size), scale)
    return out


def apply_pose(points: np.ndarray, pose: np.ndarray, pivot: np.ndarray, size: float) -> np.ndarray:
    """T(points) for one pose (4,): points (N, 2) -> (N, 2) (the inverse of the fit, for tests
    and for drawing)."""
    roll, dx, dy, scale = (float(v) for v in pose)
    r = np.radians(roll)
    rot = np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]])
    p = np.asarray(points, np.float64) - pivot
    return (scale * p @ rot.T + pivot + np.array([dx, dy]) * size).astype(np.float32)


def relative_pose(pose: np.ndarray, ref_pose: np.ndarray) -> np.ndarray:
    """Pose (..., 4) relative to another pose `ref_pose` (4,) of the same reference: the
    transform from the face at `ref_pose` to the face at `pose` (about its pivot)."""
    p, r = np.asarray(pose, np.float32), np.asarray(ref_pose, np.float32)
    out = p - r
    out[..., 3] = p[..., 3] / r[3]
    return out


def motion_level(pose: np.ndarray) -> float:
    """RMS of a clip's pose (F, 4) about its mean, face-relative: sqrt(mean_f(d_roll^2 +
    (d_dx^2 + d_dy^2) / FACE_HALF_WIDTH^2 + d_log_scale^2)), roll in radians. 0: a still head."""
    p = np.asarray(pose, np.float64)
    if p.ndim != 2 or p.shape[1] != 4 or len(p) < 1:
        raise PoseError(f"a pose sequence must be (F, 4), got shape {p.shape}")
    v = np.stack([np.radians(p[:, 0]), p[:, 1] / FACE_HALF_WIDTH, p[:, 2] / FACE_HALF_WIDTH,
                  np.log(np.maximum(p[:, 3], 1e-6))], -1)
    v -= v.mean(0)
    return float(np.sqrt((v * v).sum(-1).mean()))


def motion_bucket(level):
    """Motion level(s) (1 = the training data's typical motion) -> SVD motion bucket(s) in [0, 255]."""
    return np.clip(TYPICAL_BUCKET * np.asarray(level, np.float32), 0.0, MAX_BUCKET)


def fit_length(pose: np.ndarray, num_frames: int) -> np.ndarray:
    """A pose sequence (F, 4) played to `num_frames`: cut when longer; when shorter, played
    forward then backward (and again), so a short driving clip never jumps back to its start."""
    p = np.asarray(pose, np.float32)
    if len(p) >= num_frames:
        return p[:num_frames]
    if len(p) == 1:
        return np.repeat(p, num_frames, 0)
    cycle = np.concatenate([np.arange(len(p)), np.arange(len(p) - 2, 0, -1)])
    return p[cycle[np.arange(num_frames) % len(cycle)]]


# ----------------------------------------------------------------------------- driving videos


def _sidecar_landmarks(path: Path) -> np.ndarray | None:
    """Landmarks from a NAME.json beside the video (as `emotivetalk synth` writes), if any."""
    j = path.with_suffix(".json")
    try:
        gt = json.loads(j.read_text()) if j.is_file() else None
    except (OSError, ValueError):
        return None
    if isinstance(gt, dict) and "landmarks" in gt:
        lm = np.asarray(gt["landmarks"], np.float32)
        return lm if lm.ndim == 3 and lm.shape[1:] == (68, 2) else None
    return None


def video_landmarks(path: str | os.PathLike, fps: float = 25.0, *, max_frames: int | None = None,
                    detector=None, what: str = "pose video") -> tuple[np.ndarray, object]:
    """A video's face landmarks (F, 68, 2) in its pixels at `fps`, and its `video.probe` info.

    Landmarks come from a sidecar NAME.json beside the video with "landmarks" for every frame
    (`emotivetalk synth` writes one: the exact landmarks, where dlib reads cartoon faces poorly,
    benchmarks/README.md), else from dlib (`face.track_landmarks`). Raises PoseError (one line,
    naming the video as `what`) when neither gives a face."""
    from emotivetalk_jax.data import face as facelib
    from emotivetalk_jax.data import video as vid

    p = Path(path)
    try:
        info = vid.probe(p)
        frames = vid.read_frames(p, fps, max_frames=max_frames, info=info)
    except vid.VideoError as e:
        raise PoseError(f"{what} {p}: {e}") from None
    if len(frames) < 1:
        raise PoseError(f"{what} {p} has no frames")
    lms = _sidecar_landmarks(p)
    if lms is not None and len(lms) >= len(frames):
        return lms[: len(frames)], info
    det = detector or facelib.DlibDetector(upsample=1 if min(info.width, info.height) < 400 else 0)
    lms = facelib.track_landmarks(frames, det, every=5)
    if lms is None:
        raise PoseError(f"no face found in the {what} {p} (dlib found none on its frames); give a video "
                        "of a face seen from the front")
    return lms, info


def pose_from_video(path: str | os.PathLike, fps: float = 25.0, *, max_frames: int | None = None,
                    detector=None) -> np.ndarray:
    """The pose (F, 4) of a driving video's face relative to its first frame, at `fps`; landmarks
    as `video_landmarks` finds them. Raises PoseError (one line) when there is no face."""
    lms, info = video_landmarks(path, fps, max_frames=max_frames, detector=detector)
    return pose_from_landmarks(lms, lms[0], info.width)


# ----------------------------------------------------------------------------- generation requests


def check_motion_level(level, conditioning: bool, name: str = "--motion") -> float | None:
    """A requested motion level (None: the bundle's typical) for a bundle with or without the knob."""
    if level is None:
        return None
    if not conditioning:
        raise PoseError(f"{name}: this checkpoint was trained without the motion knob (motion_conditioning off in its "
                        f"settings), so its head motion cannot be set; leave {name} out")
    return validate.check_float(level, name, 0.0, MAX_LEVEL)


def check_pose(pose, what: str = "pose") -> np.ndarray:
    """A driving pose sequence (F, 4) as `pose_from_landmarks` gives it: finite, scale > 0."""
    p = np.asarray(pose, np.float32)
    if p.ndim != 2 or p.shape[1] != 4 or len(p) < 1:
        raise PoseError(f"{what} must be (frames, 4) = {', '.join(POSE_KEYS)} per frame, got shape {p.shape}")
    if not np.isfinite(p).all() or not (p[:, 3] > 0).all():
        raise PoseError(f"{what} must be finite with scale > 0")
    return p


def driving_pose(pose=None, video=None, *, fps: float, supported: bool) -> np.ndarray | None:
    """The driving pose (F, 4) a generation request gives: `pose` (an array) or `video` (a path:
    its face's pose relative to its first frame), None when neither; a bundle whose ETHD has no
    pose guider (`supported` False) refuses either."""
    if pose is None and video is None:
        return None
    if pose is not None and video is not None:
        raise PoseError("give a driving pose either as an array or as a video, not both")
    if not supported:
        raise PoseError("this checkpoint's backbone has no pose condition (stage 2 trained without pose_condition), "
                        "so it cannot follow a driving pose; leave --pose-video out")
    if video is not None:
        validate.check_file(video, "pose video", error=PoseError)
        return pose_from_video(video, fps)
    return check_pose(pose)


def play_to(pose: np.ndarray, num_frames: int) -> np.ndarray:
    """`fit_length`, with a warning when the driving pose is shorter than the speech."""
    if len(pose) == 1 and num_frames > 1:
        validate.warn(f"the driving pose has one frame for {num_frames} frames of speech; the head holds that pose")
    elif len(pose) < num_frames:
        validate.warn(f"the driving pose has {len(pose)} frames for {num_frames} frames of speech; it plays forward "
                      "and back until the speech ends")
    return fit_length(pose, num_frames)


__all__ = ["check_motion_level", "check_pose", "driving_pose", "play_to", "POSE_KEYS", "RIGID", "STILL", "PoseError", "similarity_fit", "pose_from_landmarks", "apply_pose",
           "relative_pose", "motion_level", "motion_bucket", "fit_length", "pose_from_video", "video_landmarks"]
