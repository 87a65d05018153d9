"""Known answers of the evaluation statistics (issue 18), no network weights needed.

Fréchet distance: a set against itself, closed forms (commuting covariances; 2 x 2
non-commuting ones through tr sqrt(M) = sqrt(tr M + 2 sqrt(det M))), scipy's sqrtm on a
wide case as pytorch-fid computes it; streamed statistics against one pass; MFCC against
python_speech_features; SyncNet's offset search on embeddings shifted by k frames, and
`sync_scores` end to end on a synthetic audio-video pair whose shift is known (stand-in
towers that read frame brightness and MFCC energy); the command's one-line errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import python_speech_features as psf
import scipy.linalg
from flax import nnx

from emotivetalk_jax import cli
from emotivetalk_jax.convert.engine import ConversionError
from emotivetalk_jax.convert.metric_nets import load_metric_network
from emotivetalk_jax.eval import evaluate, syncnet
from emotivetalk_jax.eval.frechet import FeatureStats, feature_stats, frechet_distance, stats_distance


def _spd(rng, d, n=None):
    a = rng.standard_normal((d, n or 2 * d))
    return a @ a.T / a.shape[1] + 0.1 * np.eye(d)


def test_frechet_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).standard_normal((300, 64)) * 3 + 1
    s = feature_stats(x)
    assert abs(stats_distance(s, s)) < 1e-6
    # rank-deficient covariance (fewer rows than features), as a short clip gives
    s = feature_stats(x[:20])
    assert abs(stats_distance(s, s)) < 1e-6


def test_frechet_closed_forms():
    rng = np.random.default_rng(1)
    # commuting covariances (same eigenvectors): |dmu|^2 + sum (sqrt a - sqrt b)^2
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    a, b = rng.uniform(0.1, 4, 16), rng.uniform(0.1, 4, 16)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2), rel=1e-9)
    # non-commuting 2 x 2: tr sqrt(S1 S2) = sqrt(tr(S1 S2) + 2 sqrt(det(S1 S2)))
    for _ in range(5):
        s1, s2 = _spd(rng, 2), _spd(rng, 2)
        m = s1 @ s2
        want = np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
        assert frechet_distance(np.zeros(2), s1, np.zeros(2), s2) == pytest.approx(want, rel=1e-9, abs=1e-12)
    # pytorch-fid's formulation (scipy sqrtm of S1 S2) on a wide case
    s1, s2 = _spd(rng, 64), _spd(rng, 64)
    want = np.sum((mu1[:1] - mu2[:1]) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    got = frechet_distance(np.r_[mu1[:1], np.zeros(63)], s1, np.r_[mu2[:1], np.zeros(63)], s2)
    assert got == pytest.approx(want, rel=1e-8)


def test_streaming_statistics_equal_one_pass():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((257, 32)) * rng.uniform(0.5, 3, 32) + 1e3  # large offset: a one-pass E[x^2] would lose digits
    stream = FeatureStats(32)
    for lo, hi in ((0, 1), (1, 50), (50, 50), (50, 200), (200, 257)):
        stream.update(x[lo:hi])
    merged = feature_stats(x[:100]).merge(feature_stats(x[100:]))
    for s in (stream, merged):
        assert s.count == 257
        np.testing.assert_allclose(s.mean, x.mean(0), rtol=1e-13)
        np.testing.assert_allclose(s.cov, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match=r"must be \(N, 32\)"):
        stream.update(np.zeros((3, 31)))
    with pytest.raises(ValueError, match="at least 2"):
        _ = FeatureStats(4).update(np.zeros((1, 4))).cov


def test_mfcc_matches_python_speech_features():
    rng = np.random.default_rng(3)
    audio = np.round(rng.standard_normal(16000 + 123) * 3000).astype(np.int16)
    np.testing.assert_allclose(syncnet.mfcc(audio), psf.mfcc(audio, 16000), rtol=1e-9, atol=1e-9)
    short = audio[:300]  # shorter than one window
    np.testing.assert_allclose(syncnet.mfcc(short), psf.mfcc(short, 16000), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("k", [-4, 0, 3, 15])
def test_offset_search_recovers_a_known_shift(k):
    rng = np.random.default_rng(4)
    n, d = 60, 32
    seq = rng.standard_normal((n + 40, d))
    lip = seq[20:20 + n]  # lip embedding of frame i matches the audio embedding of frame i + k
    aud = seq[20 - k:20 - k + n] + 0.05 * rng.standard_normal((n, d))
    r = syncnet.offset_search(lip, aud)
    assert r.offset == -k
    assert r.distances.shape == (31,)
    assert r.min_distance == pytest.approx(r.distances.min())
    assert r.confidence > 1.0


class _StandIn(nnx.Module):
    """SyncNet's interface with towers that measure what the synthetic pair encodes:
    the lip tower reads each frame's brightness, the audio tower each frame's MFCC energy (c0)."""

    @staticmethod
    def _z(x):
        return (x - x.mean(-1, keepdims=True)) / (x.std(-1, keepdims=True) + 1e-6)

    def forward_lip(self, windows):  # (B, 5, 224, 224, 3)
        return self._z(windows.mean(axis=(2, 3, 4)))

    def forward_aud(self, mfcc):  # (B, 13, 20, 1): 4 MFCC frames per video frame
        return self._z(mfcc[:, 0, :, 0].reshape(mfcc.shape[0], 5, 4).mean(-1))


@pytest.mark.parametrize("k", [2, -3])
def test_sync_scores_find_the_shift_of_a_synthetic_pair(k):
    """Video frame t's brightness and the loudness of audio frame t + k follow one random sequence
    (the audio is k frames late): syncnet_python reports offset -k."""
    rng = np.random.default_rng(5)
    frames_n = 48
    level = rng.uniform(0, 1, frames_n + 20)
    frames = np.repeat((40 + 180 * level[10:10 + frames_n])[:, None, None, None], 16, 1).repeat(16, 2).repeat(3, 3)
    envelope = np.exp(3 * level[10 - k:10 - k + frames_n]).repeat(syncnet.SAMPLES_PER_FRAME)
    audio = 0.01 * envelope * rng.standard_normal(envelope.size)
    r = evaluate.sync_scores(_StandIn(), frames.astype(np.uint8), audio.astype(np.float32), batch=8)
    assert r.offset == -k
    assert r.confidence > 0.5


def test_crops_stay_square_and_pad_outside_the_frame():
    frames = np.zeros((2, 100, 120, 3), np.uint8)
    box = np.array([-10.0, 20, 30, 60])  # sticks out on the left
    crop = evaluate.sync_crop(frames, box)
    assert crop.shape[1:] == (56, 56, 3) and (crop[:, :, 0] == 110).all()  # syncnet_python's geometry and grey pad
    assert evaluate.face3d_crop(frames, box).shape[1:] == (60, 60, 3)


def test_evaluate_without_weights_names_them_in_one_line_and_exits_2(capsys, tmp_path):
    assert cli.main(["evaluate", str(tmp_path), str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("emotivetalk: error: no metric weights given")
    for flag in ("--fid-weights", "--fvd-weights", "--syncnet-weights", "--face3d-weights"):
        assert flag in err


def test_pickles_are_refused_and_wrong_files_named(tmp_path):
    with pytest.raises(ConversionError, match="never loaded.*save_file"):
        load_metric_network("sync", tmp_path / "syncnet_v2.model")
    from safetensors.numpy import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"netcnnaud.0.weight": np.zeros((64, 1, 3, 3), np.float32), "stray": np.zeros(2, np.float32)}, str(bad))
    with pytest.raises(ConversionError, match="stray.*missing from the checkpoint"):
        load_metric_network("sync", bad)
