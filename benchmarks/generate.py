"""Seconds of compute per second of video for `emotivetalk generate`, split by stage.

    python benchmarks/generate.py [--checkpoint DIR] [--seconds 4] [--steps N] [--repeats 2]

Without --checkpoint a random tiny bundle is written to a temporary folder (the demo
checkpoint, once it exists, is measured the same way). Speech of the requested length is
the synthetic domain's (held-out split), the portrait the packaged astronaut crop. The
first run includes compilation; the reported figures are the best warm run's, per stage
(portrait, audio, lip, expression, denoise, decode, write), as seconds per second of
video, plus the cold (first-run) totals. One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--repeats", type=int, default=2, help="warm runs after the cold one")
    p.add_argument("--resolution", type=int, default=None, help="random bundle only")
    a = p.parse_args()

    import jax

    from emotivetalk_jax.bundle import make_random_bundle
    from emotivetalk_jax.data.synthetic import SyntheticDomain
    from emotivetalk_jax.pipeline import EmotiveTalkPipeline

    tmp = tempfile.TemporaryDirectory()
    ckpt = a.checkpoint or make_random_bundle(Path(tmp.name) / "bundle", "tiny", 0, resolution=a.resolution)
    t = time.perf_counter()
    pipe = EmotiveTalkPipeline.from_pretrained(ckpt, progress=False)
    load_s = time.perf_counter() - t
    clip = SyntheticDomain(0).clip(0, "test")
    n = int(round(a.seconds * 16000))
    wave = np.concatenate([clip.audio] * (n // len(clip.audio) + 1))[:n]
    portrait = Path(__file__).resolve().parents[1] / "emotivetalk_jax" / "assets" / "portrait.png"
    out = Path(tmp.name) / "bench.mp4"
    runs = []
    for _ in range(1 + a.repeats):
        r = pipe(str(portrait), wave, emotion="happy", steps=a.steps, out=out)
        runs.append(r.timings)
    video_s = r.info["num_frames"] / pipe.settings.fps
    warm = min(runs[1:] or runs, key=lambda t: sum(t.values()))
    s = pipe.settings
    print(json.dumps({
        "checkpoint": str(a.checkpoint or "random tiny bundle"), "variant": s.variant, "resolution": s.resolution,
        "frames": r.info["num_frames"], "video_seconds": video_s, "steps": a.steps or s.steps,
        "window": s.window, "overlap": s.overlap, "device": str(jax.devices()[0]), "load_s": round(load_s, 2),
        "seconds_per_video_second": {k: round(v / video_s, 3) for k, v in warm.items()},
        "total_seconds_per_video_second": round(sum(warm.values()) / video_s, 3),
        "cold_total_seconds": round(sum(runs[0].values()), 2),
    }, indent=1))
    tmp.cleanup()


if __name__ == "__main__":
    main()
