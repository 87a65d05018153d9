"""Overlapping temporal windows and their centre-heavy fusion weights (REFERENCE.md §3).

A sequence of N frames is covered by windows of T frames with overlap O (stride T - O);
the last window is shifted back to end at N, so every window lies inside [0, N) and no
window ever touches padding. With N <= T there is one window of N frames.

Bucketing: one compiled program serves every length of a bucket. The buffer is padded to
`bucket_frames` and the window list to a fixed count; starts and a validity mask are
data (traced), computed from the real length, and dummy windows get zero weight.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def _check(window: int, overlap: int) -> None:
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"need window >= 1 and 0 <= overlap < window; got window {window}, overlap {overlap}")


def num_windows(num_frames: int, window: int, overlap: int) -> int:
    """How many windows cover `num_frames` frames (1 when num_frames <= window)."""
    _check(window, overlap)
    return 1 + max(0, math.ceil((num_frames - window) / (window - overlap)))


def window_starts(num_frames: int, window: int, overlap: int) -> np.ndarray:
    """First frame of every window, (K,) int32; the last window ends exactly at `num_frames`."""
    k = num_windows(num_frames, window, overlap)
    starts = np.arange(k) * (window - overlap)
    return np.minimum(starts, max(num_frames - window, 0)).astype(np.int32)


def fusion_weights(window: int) -> jax.Array:
    """w_k = min((2k+1)/T, 2 - (2k+1)/T), k = 0..T-1: a triangle, 1/T at the ends, ~1 in the middle."""
    r = (2 * np.arange(window) + 1) / window
    return jnp.asarray(np.minimum(r, 2 - r), jnp.float32)


def traced_window_starts(num_frames: jax.Array, window: int, overlap: int, max_windows: int) -> tuple[jax.Array, jax.Array]:
    """`window_starts` for a traced real length, padded to `max_windows`: (starts (K,), valid (K,) bool).

    Dummy windows start at 0 (inside the real frames) and are invalid (weight 0).
    Requires num_frames >= window (shorter sequences use a single exact-length window).
    """
    _check(window, overlap)
    stride = window - overlap
    n = jnp.asarray(num_frames, jnp.int32)
    count = 1 + jnp.maximum(0, (n - window + stride - 1) // stride)
    k = jnp.arange(max_windows, dtype=jnp.int32)
    valid = k < count
    starts = jnp.where(valid, jnp.minimum(k * stride, jnp.maximum(n - window, 0)), 0)
    return starts, valid


def bucket_windows(count: int, per_octave: int = 4, multiple: int = 1) -> int:
    """Round a window count up to a geometric ladder (`per_octave` rungs per doubling), then to `multiple`.

    per_octave 4 gives 1..8, 10, 12, 14, 16, 20, 24, 28, 32, 40, ...: at most ~25% dummy windows.
    """
    if count <= 2 * per_octave:
        b = count
    else:
        octave = 2 ** math.floor(math.log2(count / per_octave))
        b = math.ceil(count / octave) * octave
        # the rung step inside [per_octave * octave, 2 * per_octave * octave) is `octave`
    return -(-b // multiple) * multiple


def bucket_length(
    num_frames: int,
    window: int,
    overlap: int,
    *,
    length_buckets: tuple[int, ...] = (),
    per_octave: int = 4,
    multiple: int = 1,
) -> tuple[int, int, int]:
    """Static shapes for a real length: (window used, padded frames, padded window count).

    N <= T: (N, N, 1), one exact window, no padding. Otherwise the smallest of
    `length_buckets` holding N, else the geometric ladder of window counts; the padded
    length is the span of that many windows, so the program depends only on the bucket.
    """
    if num_frames < 1:
        raise ValueError(f"need at least one frame, got {num_frames}")
    if num_frames <= window:
        return num_frames, num_frames, 1
    fitting = [b for b in sorted(length_buckets) if b >= num_frames]
    count = num_windows(fitting[0] if fitting else num_frames, window, overlap)
    if not fitting:
        count = bucket_windows(count, per_octave)
    count = -(-count // multiple) * multiple
    return window, window + (count - 1) * (window - overlap), count
