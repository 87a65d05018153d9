"""Frozen-model outputs computed once per training clip, cached, and sliced into windows.

Shape legend: N video frames of a clip, R >= N rows of a cached array, F training-window frames.

Stage 2 conditions on models that do not train (the VAE encoder, the face encoders, V-AID's
lip projector). Their outputs for a frame depend only on that frame (and its audio window), so
a stage may hand the loader a `FrozenOutputs`: `compute(frames, feats)` maps one clip's frames
(N, S, S, 3) uint8 (`data.pipeline.clip_frames`: the very pixels the loader cuts windows from)
and its whole-utterance audio features (N, D) (`data.audio_cache`) to named per-row arrays
(R, ...). `source_outputs` runs it once per clip of the source and keeps the result in the
workdir (`frozen_outputs.npz`), keyed by `digest` (the frozen parameters and settings the
outputs depend on) and the source, so a resumed run reuses it, a changed frozen model or a
damaged file recomputes it. The loader cuts rows `window_rows(arr, start, F)`: start .. start
+ F - 1, clamped to the array's last row, the rule `frames` and `valid` follow. An array may
carry rows past the clip's end (R > N) for what the per-step path sees on padded frames (stage
2's l_a: the audio windows past the end, which `data.audio_cache.feature_window` clamps row by row).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CACHE_NAME = "frozen_outputs.npz"


@dataclasses.dataclass(frozen=True)
class FrozenOutputs:
    """What a stage caches per clip: `compute(frames (N, S, S, 3) uint8, feats (N, D)) -> {name:
    (R, ...) array}`, `digest` of everything the values depend on, `size` the frames' side."""

    digest: str
    compute: Callable[..., dict[str, np.ndarray]]
    size: int
    # compute also takes the clip's landmarks (N, 68, 2) at `size` (aligned face encoders read them)
    landmarks: bool = False


def state_digest(h, module) -> None:
    """Feed `module`'s parameter paths and bytes (sorted by path) into the hash `h`."""
    import jax
    from flax import nnx

    leaves = jax.tree_util.tree_flatten_with_path(nnx.state(module).to_pure_dict())[0]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())


def modules_digest(*modules, extra: str = "") -> str:
    """sha256 (16 hex digits) over `extra` and the parameters of `modules`, in order."""
    h = hashlib.sha256(extra.encode())
    for m in modules:
        state_digest(h, m)
    return h.hexdigest()[:16]


def window_rows(arr: np.ndarray, start: int, frames: int) -> np.ndarray:
    """(R, ...) -> (F, ...): rows start .. start + F - 1, clamped to R - 1 (`frames`' edge rule)."""
    return arr[np.minimum(np.arange(start, start + frames), len(arr) - 1)]


def _load(path: Path, key: str, n: int) -> list[dict[str, np.ndarray]] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                log.info("%s was made by other frozen models or another source: recomputing", path)
                return None
            names = [str(s) for s in z["names"]]
            return [{k: z[f"clip_{i}__{k}"] for k in names} for i in range(n)]
    except (OSError, ValueError, KeyError) as e:
        log.warning("%s is unreadable (%s): recomputing", path, e)
        return None


def source_outputs(outputs: FrozenOutputs, source, features: Sequence[np.ndarray], *,
                   clip_frames: Callable[[object, int], np.ndarray], cache_dir: str | os.PathLike | None = None,
                   progress: bool = False,
                   clip_landmarks: Callable[[object, int], np.ndarray] | None = None) -> list[dict[str, np.ndarray]]:
    """`outputs.compute` of every clip of a random-access `source` (index order), from
    `cache_dir`'s cache when it holds the same digest over the same source, else computed and
    saved. `clip_frames(record, size)`: a clip's frames (`data.pipeline.clip_frames`);
    `clip_landmarks(record, size)` its landmarks, for outputs that read them (`outputs.landmarks`)."""
    from tqdm import tqdm

    key = f"{outputs.digest}:{outputs.size}:{source!r}:{len(source)}"
    path = Path(cache_dir) / CACHE_NAME if cache_dir else None
    if path is not None and path.exists():
        out = _load(path, key, len(source))
        if out is not None:
            log.info("frozen-model outputs of %d clips from %s", len(out), path)
            return out
    t0 = time.perf_counter()
    if outputs.landmarks and clip_landmarks is None:
        raise ValueError("these frozen outputs read each clip's landmarks (aligned face encoders): pass clip_landmarks")

    def one(i):
        rec = source[i]
        extra = (clip_landmarks(rec, outputs.size),) if outputs.landmarks else ()
        return outputs.compute(clip_frames(rec, outputs.size), features[i], *extra)

    out = [one(i) for i in tqdm(range(len(source)), desc="frozen outputs", unit="clip", disable=not progress)]
    log.info("frozen-model outputs of %d clips computed in %.1f s", len(out), time.perf_counter() - t0)
    if path is not None:
        names = sorted(out[0]) if out else []
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, key=np.asarray(key), names=np.asarray(names),
                 **{f"clip_{i}__{k}": v for i, d in enumerate(out) for k, v in d.items()})
        os.replace(tmp, path)
    return out
