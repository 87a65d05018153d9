"""Data-side throughput on this machine (2 CPU cores): synthetic clips, prepared clips, windows.

    python benchmarks/data.py [--clips 8] [--workers 2]

Prints one JSON object:
  synth_generate_clips_s   clip = identity + speech + per-frame states (no pixels)
  synth_render_{64,256}_clips_s   generate + render every frame of the clip
  synth_write_64_clips_s   `emotivetalk synth --size 64` (render + H.264/AAC mp4 + png + wav + json)
  prepare_clips_s          `emotivetalk prepare` on those mp4s (probe, audio, face, crop, landmarks,
                           JPEG, tfds array_record), `workers` processes
  pipeline_windows_s       grain windows of 16 frames at 64 px (synthetic source, in-process)
  stage2_windows_{rendered,cached}_s   the demo's stage-2 windows (6 frames, 64 px) from generated
                           clips, with pixels and without (`ClipWindow(pixels=False)`, what the
                           frozen-output cache reads), and their ratio
Clip length 2-4 s (50-100 frames at 25 fps), mean about 3 s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def _rate(n, fn):
    t = time.perf_counter()
    fn()
    return round(n / (time.perf_counter() - t), 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    from emotivetalk_jax.data import synthetic as syn
    from emotivetalk_jax.data.pipeline import ClipWindow, SyntheticClips, make_loader
    from emotivetalk_jax.data.prepare import PrepareConfig, prepare_main

    n = a.clips
    out: dict = {"clips": n, "workers": a.workers}
    syn._clip.cache_clear()
    out["synth_generate_clips_s"] = _rate(n, lambda: [syn.SyntheticDomain(100).clip(i) for i in range(n)])
    for size in (64, 256):
        syn._clip.cache_clear()
        out[f"synth_render_{size}_clips_s"] = _rate(
            n, lambda: [syn.SyntheticDomain(101 + size).clip(i).frames(size=size) for i in range(n)])
    with tempfile.TemporaryDirectory() as td:
        src, dst = Path(td) / "v", Path(td) / "p"
        syn._clip.cache_clear()
        out["synth_write_64_clips_s"] = _rate(n, lambda: syn.synth_main(src, n, seed=7, size=64, progress=False,
                                                                        workers=a.workers))
        frames = sum(json.loads(p.read_text())["num_frames"] for p in src.glob("train_*.json"))
        out["mean_clip_frames"] = round(frames / n, 1)
        rep = {}
        out["prepare_clips_s"] = _rate(n, lambda: rep.update(prepare_main(src, dst, PrepareConfig(size=64),
                                                                          workers=a.workers, progress=False)))
        out["prepared"] = len(rep["prepared"])
        out["prepare_landmark_source"] = "dlib or sidecar json (per clip)"
    ld = make_loader(SyntheticClips(0, "train", 64), frames=16, size=64, batch_size=4, seed=0, shard=(0, 1),
                     mask_sizes=(8, 4, 2, 1))
    it = iter(ld)
    next(it)
    out["pipeline_windows_s"] = _rate(4 * 8, lambda: [next(it) for _ in range(8)])
    # stage 2's windows (the demo's: 6 frames at 64 px, neutral reference), once the clips are
    # generated: rendered, and without pixels as its frozen-output cache reads them
    src = SyntheticClips(0, "train", 64)
    for name, pixels in (("stage2_windows_rendered_s", True), ("stage2_windows_cached_s", False)):
        w = ClipWindow(frames=6, size=64, mask_sizes=(16,), reference_neutral=1.0, pixels=pixels)
        rng = np.random.default_rng(0)
        [w.random_map(src[i], rng) for i in range(64)]
        out[name] = _rate(256, lambda: [w.random_map(src[i % 64], rng) for i in range(256)])
    out["stage2_windows_speedup"] = round(out["stage2_windows_cached_s"] / out["stage2_windows_rendered_s"], 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
