"""Head pose read back on held-out synthetic clips with moving heads (issue 30).

For `--clips` test clips of the moving-heads domain (`data.synthetic.MOVING_HEADS`) at `--size`:
* r per pose component between the rendered pose and the pose fitted to the clip's landmarks
  (`data.pose.pose_from_landmarks`): from the exact landmarks, and with `--dlib` from dlib's
  landmarks on the frames rendered at `--dlib-size` px (what `prepare` and `--pose-video` read
  from a real video);
* the same r for the pose read from the pixels (`data.measure.read_pose`, what the bench reads
  from generated frames);
* the bench's pose scores on the ground truth scored as if generated (`eval.pose_scores`: the
  truth's own pose as the driving one): pose_corr and pose_std_ratio should be ~1;
* r between each clip's drawn motion level and its measured pose motion (`pose.motion_level`):
  what the motion knob learns from;
* the mouth opening (r) and the clip's emotion (majority of frames) read back from the same
  moving ground truth by `data.measure` (the bench's lip and emotion scores on moving heads).

    python benchmarks/pose_readback.py --clips 16 [--dlib]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from emotivetalk_jax.data import measure
from emotivetalk_jax.data import pose as P
from emotivetalk_jax.data.synthetic import SyntheticDomain, domain_config
from emotivetalk_jax.eval.pose_scores import pose_scores


def _r(truth: list[np.ndarray], got: list[np.ndarray]) -> dict[str, float]:
    t, g = np.concatenate(truth), np.concatenate(got)
    out = {}
    for k, name in enumerate(P.POSE_KEYS[:3]):  # the domain has no scale motion
        ok = np.isfinite(g[:, k])
        out[name] = round(float(np.corrcoef(t[ok, k], g[ok, k])[0, 1]), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--dlib", action="store_true", help="also fit dlib's landmarks on frames at --dlib-size px")
    ap.add_argument("--dlib-size", type=int, default=256)
    a = ap.parse_args()
    t0 = time.perf_counter()
    domain = SyntheticDomain(0, domain_config(1.0, moving_heads=True))
    clips = [domain.clip(i, "test") for i in range(a.clips)]
    truth = [c.pose() for c in clips]
    exact = [P.pose_from_landmarks(c.landmarks(size=a.size), c.portrait_landmarks(a.size), a.size) for c in clips]
    read = [measure.read_pose(c.frames(size=a.size), c.identity) for c in clips]
    out = {"clips": a.clips, "size": a.size, "frames": int(sum(len(t) for t in truth)),
           "r_landmark_fit": _r(truth, exact), "r_read_pose": _r(truth, read),
           "unread_fraction": float(np.mean(np.isnan(np.concatenate(read)[:, 0])))}
    if a.dlib:
        from emotivetalk_jax.data import face as facelib

        det = facelib.DlibDetector(upsample=1)
        fits, used, t_truth = [], 0, []
        for c, t in zip(clips, truth):
            lms = facelib.track_landmarks(c.frames(size=a.dlib_size), det, every=5)
            ref = facelib.track_landmarks(c.portrait(a.dlib_size)[None], det, every=1)
            if lms is None or ref is None:
                continue
            used += 1
            fits.append(P.pose_from_landmarks(lms, ref[0], a.dlib_size))
            t_truth.append(t)
        out["dlib"] = {"size": a.dlib_size, "clips_with_a_face": used,
                       "r_landmark_fit": _r(t_truth, fits) if fits else None}
    scores = pose_scores(read, truth, driving=[P.relative_pose(t, t[0]) for t in truth])
    out["ground_truth_as_generated"] = {k: {n: (None if v is None else round(v, 4)) for n, v in d.items()}
                                        for k, d in scores.items() if k in ("pose_corr", "pose_std_ratio")}
    levels = np.array([c.motion_level for c in clips])
    motion = np.array([P.motion_level(t) for t in truth])
    out["motion_level_vs_drawn_level_r"] = round(float(np.corrcoef(levels, motion)[0, 1]), 4)
    out["motion_level"] = {"median": round(float(np.median(motion)), 4), "min": round(float(motion.min()), 4),
                           "max": round(float(motion.max()), 4)}
    opened, emo_ok = [], []
    for c in clips:
        opening, emo = measure.read_opening_and_emotion(c.frames(size=a.size), c.identity)
        opened.append(opening)
        votes = np.bincount(emo[emo >= 0], minlength=8)
        emo_ok.append(bool(votes.sum()) and int(votes.argmax()) == c.emotion_id)
    o, t = np.concatenate(opened), np.concatenate([c.states[:, 0] for c in clips])
    ok = np.isfinite(o)
    out["ground_truth_lip_r"] = round(float(np.corrcoef(o[ok], t[ok])[0, 1]), 4)
    out["ground_truth_emotion_accuracy"] = float(np.mean(emo_ok))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
