"""One audio feature path for training and inference: whole-utterance features, cached per clip.

Shape legend: N video frames of a clip, F training-window frames, c audio context frames
each side, D feature width.

The pipeline computes a clip's features once, over the whole utterance, with
`data.audio.audio_features` (waveform normalised over the utterance, the encoder run on all
of it, interpolated to video frames) and cuts the per-frame windows A_w with
`data.audio.frame_windows` (first / last frame repeated past the ends). Training does the
same: `clip_features` calls that very function for every clip of the source, once, and the
loader slices `feature_window(feats, start, F, c)`: rows start - c .. start + F + c - 1,
clamped to the clip exactly as `frame_windows` clamps. So the A_w a training step sees for
frame j is, bit for bit, the A_w the pipeline feeds the projector for frame j
(tests/test_audio_cache.py).

The cache lives in the stage's workdir (`audio_features.npz`), keyed by a digest of the
encoder's parameters and the source, so a resumed run reuses it and a different encoder
recomputes it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from emotivetalk_jax.data.audio import audio_features

log = logging.getLogger(__name__)

CACHE_NAME = "audio_features.npz"


def feature_window(feats: np.ndarray, start: int, frames: int, context: int) -> np.ndarray:
    """(N, D) whole-clip features -> (F + 2 c, D): rows [start - c, start + F + c), clamped to
    [0, N - 1] (frame_windows' edge rule), so window k of row j + c is frame_windows' row j."""
    n = len(feats)
    idx = np.clip(np.arange(start - context, start + frames + context), 0, n - 1)
    return feats[idx]


def encoder_digest(encoder) -> str:
    """sha256 (16 hex digits) over the encoder's config and parameter bytes."""
    from emotivetalk_jax.data.frozen_cache import modules_digest

    return modules_digest(encoder, extra=repr(sorted(encoder.config.items())))


def _wave(record) -> np.ndarray:
    audio = record.audio if hasattr(record, "audio") else record["audio"]
    return np.asarray(audio, np.float32)


def clip_features(encoder, waves: Sequence[np.ndarray], *, layers=-1, progress: bool = False) -> list[np.ndarray]:
    """Per-clip (N, D) float32 features by the pipeline's own function (`audio_features`)."""
    from tqdm import tqdm

    out = []
    for w in tqdm(waves, desc="audio features", unit="clip", disable=not progress):
        out.append(np.asarray(audio_features(w, encoder, layers=layers), np.float32))
    return out


def source_features(encoder, source, *, layers=-1, cache_dir: str | os.PathLike | None = None,
                    progress: bool = False) -> list[np.ndarray]:
    """Features of every clip of a random-access `source` (index order), from `cache_dir`'s
    cache when it was made by the same encoder over the same source, else computed and saved."""
    key = f"{encoder_digest(encoder)}:{layers}:{source!r}:{len(source)}"
    path = Path(cache_dir) / CACHE_NAME if cache_dir else None
    if path is not None and path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    feats = [z[f"clip_{i}"] for i in range(len(source))]
                    log.info("audio features of %d clips from %s", len(feats), path)
                    return feats
            log.info("%s was made by another encoder or source: recomputing", path)
        except (OSError, ValueError, KeyError) as e:
            log.warning("%s is unreadable (%s): recomputing", path, e)
    feats = clip_features(encoder, [_wave(source[i]) for i in range(len(source))], layers=layers, progress=progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, key=np.asarray(key), **{f"clip_{i}": f for i, f in enumerate(feats)})
        os.replace(tmp, path)
    return feats
