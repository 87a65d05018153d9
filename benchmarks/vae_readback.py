"""What a checkpoint's VAE lets through of the expression: the emotion read back from its
reconstruction of held-out ground truth, per frame and per clip.

    python benchmarks/vae_readback.py [--checkpoint DIR] [--vae WORKDIR] [--clips 24]

For each of the first `--clips` held-out clips (test split, no head motion), every third of its
first 24 frames is rendered, encoded and decoded by the bundle's VAE (or the latest checkpoint
of a stage-`vae` workdir, `--vae`, e.g. a decoder fine-tune), and read back with
`data.measure`: the per-frame emotion (`classify_expression`), the clip's majority, and the
mean error of each expression parameter against the truth, overall and per emotion (`by_emotion`:
frame accuracy and signed mean error in `synthetic_face.EXPRESSION_KEYS` order). The ground truth
itself reads back at about 0.98 per frame. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="bundle folder (default: the installed demo)")
    p.add_argument("--vae", default=None, help="take the VAE from this stage-vae workdir's latest checkpoint")
    p.add_argument("--clips", type=int, default=24)
    a = p.parse_args(argv)

    import numpy as np

    from emotivetalk_jax.data import measure as M
    from emotivetalk_jax.data import synthetic_face as sf
    from emotivetalk_jax.data.synthetic import SynthConfig, SyntheticDomain
    from emotivetalk_jax.data.synthetic_speech import EMOTIONS
    from emotivetalk_jax.eval.synthetic_bench import vae_reconstruction
    from emotivetalk_jax.pipeline import EmotiveTalkPipeline, default_checkpoint

    pipe = EmotiveTalkPipeline.from_pretrained(os.fspath(a.checkpoint or default_checkpoint()), progress=False)
    if a.vae:
        from emotivetalk_jax.train.stages.frozen import from_workdir

        pipe.bundle.vae = from_workdir(a.vae, pipe.bundle.vae)
    domain = SyntheticDomain(0, SynthConfig(head_motion=0.0))
    frame_ok, clip_ok, errors, emotions, frame_emotion = [], [], [], [], []
    for i in range(a.clips):
        clip = domain.clip(i, "test")
        states = clip.states[:24:3]
        rec = vae_reconstruction(pipe, sf.render(clip.identity, states, pipe.resolution))
        labels = []
        for frame, st in zip(rec, states):
            try:
                m = M.measure_frame(frame, clip.identity)
            except (M.MeasureError, ValueError, FloatingPointError, np.linalg.LinAlgError):
                labels.append(-1)
                continue
            e = M.expression_vector({k: np.float32(v) for k, v in m.items()})
            labels.append(int(M.classify_expression(e)[0]) if np.all(np.isfinite(e)) else -1)
            if np.all(np.isfinite(e)):
                errors.append(e - st[2:6])
                emotions.append(clip.emotion_id)
        labels = np.asarray(labels)
        frame_emotion += [(clip.emotion_id, int(lab) == clip.emotion_id) for lab in labels]
        frame_ok.append(np.mean(labels == clip.emotion_id))
        votes = np.bincount(labels[labels >= 0], minlength=len(EMOTIONS))
        clip_ok.append(bool(votes.sum()) and int(votes.argmax()) == clip.emotion_id)
    err, emotions, frame_emotion = np.asarray(errors), np.asarray(emotions), np.asarray(frame_emotion)
    by_emotion = {}
    for k, name in enumerate(EMOTIONS):
        if np.any(frame_emotion[:, 0] == k):
            by_emotion[name] = {"frame_accuracy": round(float(frame_emotion[frame_emotion[:, 0] == k, 1].mean()), 3),
                                "mean_error": [round(float(v), 3) for v in err[emotions == k].mean(0)]}
    print(json.dumps({"checkpoint": os.fspath(a.checkpoint or "default"), "vae": a.vae, "clips": a.clips,
                      "frame_accuracy": round(float(np.mean(frame_ok)), 3),
                      "clip_accuracy": round(float(np.mean(clip_ok)), 3),
                      "mean_error": {k: round(float(v), 3) for k, v in zip(sf.EXPRESSION_KEYS, err.mean(0))},
                      "mean_abs_error": {k: round(float(v), 3)
                                         for k, v in zip(sf.EXPRESSION_KEYS, np.abs(err).mean(0))},
                      "by_emotion": by_emotion}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
