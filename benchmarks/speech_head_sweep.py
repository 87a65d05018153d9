"""Choose the speech-emotion head's settings on the validation set, never the held-out one.

    python benchmarks/speech_head_sweep.py OUT ["dict(n=12000, dims=45, hidden=128, wd=0.1, steps=400, lr=3e-3)" ...]

OUT: a `emotivetalk speech-head train OUT` folder; its feature cache (`.features-*.npz`, the
training and validation sets' voice statistics) is reused, so each setting costs only its
training. Prints, per setting, the training accuracy and the validation accuracy at each quarter
of the steps. `n` subsamples the training utterances at random, `dims` keeps the first statistics
(29: the first shipped head's). The held-out set is not read.
"""

from __future__ import annotations

import glob
import sys
import time

import numpy as np

from emotivetalk_jax.emotion import speech as S

GRID = [dict(n=n, dims=d, hidden=h, wd=0.1, steps=st, lr=3e-3)
        for n, d, h, st in [(12000, 29, 128, 400), (12000, 45, 128, 400), (4000, 45, 128, 400), (8000, 45, 128, 400),
                            (12000, 45, 128, 1000), (12000, 45, 128, 600), (12000, 45, 64, 600)]]


def main(out: str, grid: list[dict]) -> None:
    with np.load(glob.glob(f"{out}/.features-*.npz")[0]) as z:
        x, y, v, yv = z["train"], z["train_labels"], z["validation"], z["validation_labels"]
    perm = np.random.default_rng(0).permutation(len(y))
    for g in grid:
        idx, d, t, hist = perm[: g["n"]], g["dims"], time.time(), []
        head = S.train_speech_emotion_head(
            x[idx, :d], y[idx], S.SpeechHeadConfig(in_dim=d, feature="voice", hidden=g["hidden"]), steps=g["steps"],
            weight_decay=g["wd"], learning_rate=g["lr"], eval_every=max(g["steps"] // 4, 1),
            on_eval=lambda step, m: hist.append(round(S.accuracy(m, v[:, :d], yv), 3)))
        print(g, "train", round(S.accuracy(head, x[idx, :d], y[idx]), 3), "validation", hist,
              f"{time.time() - t:.0f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [eval(a) for a in sys.argv[2:]] or GRID)
