"""Where a checkpoint loses the asked emotion: Di-CTE, the backbone, or the VAE.

    python benchmarks/emotion_path.py [--checkpoint DIR] [--clips 8] [--first 0]

For each held-out clip of `bench-synthetic` (test split, the same seeds), one JSON line:
  dicte      share of Di-CTE's e_dri frames (text-driven) whose nearest codebook row is the
             asked keyword (the codebook is the per-keyword mean e_v of the training clips);
  truth      the ground-truth frames read back with `data.measure`;
  vae        the bundle VAE's reconstruction of them (the bench's emotion ceiling);
  text       the generated video, emotion given as the keyword (the bench's score);
  truth_ev   the generated video, e_dri = the expression encoder's e_v of the ground-truth
             frames (Di-CTE skipped: the backbone alone).
Each reading is the median expression vector over frames (brow_raise, brow_inner, eye_open,
corner; the median because a frame whose brows cannot be read gives a wild value) and the
majority per-frame emotion, over the frames `data.measure` can read (as `bench-synthetic` counts
them; `readable` is their share). A last line pools each reading's clip accuracy.

If `text` fails where `truth_ev` also fails, Di-CTE is not the cause; if `vae` fails too, the
VAE's reconstruction already loses the expression.
"""

from __future__ import annotations

import argparse
import json
import os


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="bundle folder (default: the installed demo)")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--first", type=int, default=0, help="first held-out clip")
    a = p.parse_args(argv)

    import numpy as np

    from emotivetalk_jax.data import face as facelib
    from emotivetalk_jax.data import measure as M
    from emotivetalk_jax.data import synthetic_face as sf
    from emotivetalk_jax.data.synthetic import SAMPLES_PER_FRAME, SyntheticDomain, domain_config
    from emotivetalk_jax.data.synthetic_speech import EMOTIONS
    from emotivetalk_jax.emotion.codebook import expression_fn
    from emotivetalk_jax.emotion.keywords import KEYWORDS
    from emotivetalk_jax.emotion.sources import EmotionCondition
    from emotivetalk_jax.eval.synthetic_bench import vae_reconstruction
    from emotivetalk_jax.pipeline import EmotiveTalkPipeline, default_checkpoint

    pipe = EmotiveTalkPipeline.from_pretrained(os.fspath(a.checkpoint or default_checkpoint()), progress=False)
    r = pipe.resolution
    encode = expression_fn(pipe.bundle.face_encoders)
    means = np.asarray(pipe.bundle.codebook.means)
    captured = {}
    expression_latents = pipe.expression_latents

    def capture(*args, **kw):  # keep the text path's e_dri
        e, info = expression_latents(*args, **kw)
        captured["e_dri"] = np.asarray(e)[0]
        return e, info

    pipe.expression_latents = capture

    def read(frames, ident):
        _, emo = M.read_opening_and_emotion(frames, ident)  # the bench's rule: unreadable frames are -1
        vectors = []
        for f, e in zip(frames, emo):
            if e >= 0:
                vectors.append(M.expression_vector(M.measure_frame(f, ident)))
        votes = np.bincount(emo[emo >= 0], minlength=len(EMOTIONS))
        return {"vector": np.round(np.median(vectors, 0), 2).tolist() if vectors else None,
                "emotion": EMOTIONS[int(votes.argmax())] if votes.sum() else None,
                "readable": float(np.mean(emo >= 0))}

    domain = SyntheticDomain(0, domain_config(pipe.settings.synthetic_head_motion,
                                              pipe.settings.synthetic_moving_heads))
    hits = {k: [] for k in ("dicte", "truth", "vae", "text", "truth_ev")}
    for i in range(a.first, a.first + a.clips):
        clip = domain.clip(i, "test")
        lm = clip.portrait_landmarks(r)
        kw = dict(seed=i, crop=False, boxes=(facelib.lip_box(lm), facelib.face_box(lm), lm))
        portrait = clip.portrait(r)
        audio = clip.audio[: clip.num_frames * SAMPLES_PER_FRAME]
        gt = sf.render(clip.identity, clip.states, r)
        row = {"clip": i, "emotion": clip.emotion, "truth_params": np.round(np.median(
            clip.states[:, 2:6], 0), 2).tolist()}
        row["truth"] = read(gt, clip.identity)
        row["vae"] = read(vae_reconstruction(pipe, gt), clip.identity)
        row["text"] = read(pipe(portrait, audio, emotion=clip.emotion, **kw).frames, clip.identity)
        nearest = ((captured["e_dri"][:, None] - means[None]) ** 2).sum(-1).argmin(-1)
        row["dicte"] = float(np.mean(nearest == KEYWORDS.index(clip.emotion)))
        e_truth = encode(gt.astype(np.float32) / 127.5 - 1.0, clip.landmarks(size=r))  # aligned encoders read them
        cond = EmotionCondition("video", e_v=e_truth)
        row["truth_ev"] = read(pipe(portrait, audio, emotion=cond, **kw).frames, clip.identity)
        for k in hits:
            hits[k].append(row[k] > 0.5 if k == "dicte" else row[k]["emotion"] == clip.emotion)
        print(json.dumps(row), flush=True)
    print(json.dumps({"clip_accuracy": {k: float(np.mean(v)) for k, v in hits.items()},
                      "checkpoint": os.fspath(a.checkpoint or "default"), "clips": a.clips}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
