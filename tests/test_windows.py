"""Window placement, fusion weights and length buckets (no model, no compilation of note)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from emotivetalk_jax.diffusion.windows import (
    bucket_length,
    bucket_windows,
    fusion_weights,
    num_windows,
    traced_window_starts,
    window_starts,
)


@pytest.mark.parametrize("n,t,o,expected", [
    (1, 8, 3, [0]), (8, 8, 3, [0]), (9, 8, 3, [0, 1]), (13, 8, 3, [0, 5]), (14, 8, 3, [0, 5, 6]),
    (240, 120, 24, [0, 96, 120]), (216, 120, 24, [0, 96]), (20, 32, 12, [0]),
])
def test_window_starts(n, t, o, expected):
    starts = window_starts(n, t, o)
    assert starts.tolist() == expected and num_windows(n, t, o) == len(expected)


@pytest.mark.parametrize("t,o", [(8, 3), (120, 24), (32, 12), (5, 0)])
def test_windows_cover_every_frame_and_stay_inside(t, o):
    for n in range(t, 6 * t):
        starts = window_starts(n, t, o)
        covered = np.zeros(n, int)
        for s in starts:
            covered[s:s + t] += 1
        assert covered.min() >= 1 and starts.max() + t == n
        assert np.all(np.diff(starts) <= t - o) and np.all(np.diff(starts) > 0)


def test_fusion_weights():
    np.testing.assert_allclose(fusion_weights(4), [0.25, 0.75, 0.75, 0.25])
    w = np.asarray(fusion_weights(120))
    assert w[0] == w[-1] == pytest.approx(1 / 120) and w.max() == pytest.approx(119 / 120)
    np.testing.assert_allclose(w, w[::-1])
    assert fusion_weights(1).tolist() == [1.0]


def test_traced_starts_match_numpy_and_pad_with_invalid_windows():
    for t, o in [(8, 3), (120, 24)]:
        for n in [t, t + 1, 2 * t - o, 5 * t + 3]:
            k = num_windows(n, t, o)
            starts, valid = traced_window_starts(jnp.asarray(n), t, o, k + 3)
            assert np.asarray(valid).tolist() == [True] * k + [False] * 3
            assert np.asarray(starts)[:k].tolist() == window_starts(n, t, o).tolist()
            assert np.all(np.asarray(starts)[k:] == 0)


def test_window_count_ladder():
    ladder = sorted({bucket_windows(k) for k in range(1, 200)})
    assert ladder[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16]
    for k in range(1, 500):
        assert k <= bucket_windows(k) < 1.26 * k + 1
    assert bucket_windows(5, multiple=4) == 8


def test_length_buckets():
    assert bucket_length(50, 120, 24) == (50, 50, 1)  # short: one exact window
    assert bucket_length(1400, 120, 24) == bucket_length(1500, 120, 24) == (120, 120 + 15 * 96, 16)
    t, padded, k = bucket_length(130, 8, 2, length_buckets=(140, 200))
    assert (t, k) == (8, num_windows(140, 8, 2)) and padded >= 140
    assert bucket_length(250, 8, 2, length_buckets=(140, 200)) == bucket_length(250, 8, 2)
