"""Do the face encoders see expression or pose? Issue 30 item 2's gates on moving heads.

A bundle's lip and expression encoders on clips of the moving-heads domain
(`data.synthetic.MOVING_HEADS`: per-clip motion levels in [0, 2]), fitted on `--clips` train clips
and scored on `--clips` held-out test clips (the stage-0 gates, `train.gates`):
* `l_v_r`: ridge-probe r from l_v to the mouth opening (bar >= 0.95);
* `e_v_acc`: nearest-class-mean emotion accuracy of e_v per frame (bar >= 0.95);
* `e_v_pose_r` / `l_v_pose_r`: ridge-probe r from e_v (l_v) to each moving pose component (roll,
  shift x, shift y) relative to the portrait (bar for e_v: <= 0.3 on each).
The still domain's figures are given beside them (`--still` off: moving only).

`--checkpoint`: a bundle (default: the shipped demo), a stage-0 (encoders) workdir, or a native
face_encoders folder; aligned encoders (`FaceEncoderConfig.aligned`) read each frame with the
renderer's landmarks.

    python benchmarks/encoder_pose_probe.py [--checkpoint DIR] [--clips 32] [--no-still]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from emotivetalk_jax.data import pose as P
from emotivetalk_jax.train.gates import face_latents, nearest_mean_accuracy, probe_clips, ridge_r


def probe(face, clips: int, size: int, moving: bool) -> dict:
    fit = probe_clips("train", clips, size, moving_heads=moving)
    ev = probe_clips("test", clips, size, moving_heads=moving)
    fl, fe = face_latents(face, fit)
    el, ee = face_latents(face, ev)
    out = {"l_v_r": ridge_r(fl, fit.all_opening, el, ev.all_opening),
           "e_v_acc": nearest_mean_accuracy(fe, fit.frame_emotion, ee, ev.frame_emotion)}
    fp = np.concatenate([c.pose() for c in fit.clips])
    ep = np.concatenate([c.pose() for c in ev.clips])
    for name, f, e in (("e_v", fe, ee), ("l_v", fl, el)):
        out[f"{name}_pose_r"] = {k: (round(float(ridge_r(f, fp[:, i], e, ep[:, i])), 4) if np.std(ep[:, i]) > 0
                                     else None) for i, k in enumerate(P.POSE_KEYS[:3])}
    out["pose_std"] = {k: round(float(np.std(ep[:, i])), 4) for i, k in enumerate(P.POSE_KEYS[:3])}
    return {k: (round(float(v), 4) if isinstance(v, float) else v) for k, v in out.items()}


def load_face(path: str):
    """The face encoders of a bundle, a stage-0 workdir or a native face_encoders folder."""
    from pathlib import Path

    from emotivetalk_jax import bundle as B
    from emotivetalk_jax.models.vaid_variants import get_vaid_variant
    from emotivetalk_jax.train import stages as S
    from emotivetalk_jax.train.commands import load_config
    from emotivetalk_jax.train.stages.frozen import workdir_config

    if (Path(path) / "face_encoders").is_dir():
        return B.load_bundle(path).face_encoders
    variant = workdir_config(path).get("variant", "demo") if S.is_workdir(path) else "demo"
    cfg = load_config(f"configs/train.py:stage=vaid,variant={variant}")
    cfg.init.face_encoders = path
    return S.face_encoders(cfg, get_vaid_variant(variant), 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="bundle (default: the shipped demo)")
    ap.add_argument("--clips", type=int, default=32, help="clips to fit on and clips to score (each)")
    ap.add_argument("--no-still", action="store_true", help="skip the still domain")
    a = ap.parse_args()
    from emotivetalk_jax import bundle as B

    t0 = time.perf_counter()
    from emotivetalk_jax.pipeline import default_checkpoint

    face = load_face(a.checkpoint) if a.checkpoint else B.load_bundle(default_checkpoint()).face_encoders
    size = int(face.cfg.image_size)  # the stage-0 gates render at the encoders' input size
    out = {"checkpoint": str(a.checkpoint or "shipped demo"), "aligned": bool(getattr(face.cfg, "aligned", False)),
           "clips": a.clips, "size": size,
           "moving": probe(face, a.clips, size, True)}
    if not a.no_still:
        out["still"] = probe(face, a.clips, size, False)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
