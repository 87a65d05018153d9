"""Sync-C / Sync-D of Wav2Lip-era evaluations around SyncNet (`models.metrics.syncnet`).

Shape legend: B windows, T frames (5 per window), M MFCC frames (100 per second), K = 13 cepstra.

`mfcc` is python_speech_features' `mfcc` at its defaults (25 ms windows every 10 ms,
26 mel filters, 512-point FFT, pre-emphasis 0.97, lifter 22, log energy as c0), run on
16 kHz int16-scaled audio as the reference script reads it. `eval.evaluate.sync_scores`
reproduces SyncNetInstance.evaluate: embeddings for every 5-frame window, distances to the
audio embeddings shifted by -vshift..vshift frames (`offset_search`), mean over windows,
then offset = vshift - argmin, Sync-D = min, Sync-C = median - min (LSE-D / LSE-C).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import scipy.fft

from emotivetalk_jax.models.metrics.syncnet import SIZE, WINDOW, SyncNet  # noqa: F401 (the network's geometry)

MFCC_PER_FRAME = 4  # 100 MFCC frames/s over 25 video frames/s
MFCC_WINDOW = 20
SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps
VSHIFT = 15


# ----------------------------------------------------------------------------- MFCC


def _hz2mel(hz):
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel2hz(mel):
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def _filterbank(nfilt: int, nfft: int, sr: int) -> np.ndarray:
    mel = np.linspace(_hz2mel(0.0), _hz2mel(sr / 2), nfilt + 2)
    edges = np.floor((nfft + 1) * _mel2hz(mel) / sr)
    bins = np.arange(nfft // 2 + 1)[None, :]
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        rise = np.where((bins >= lo) & (bins < mid), (bins - lo) / (mid - lo), 0.0)
        fall = np.where((bins >= mid) & (bins < hi), (hi - bins) / (hi - mid), 0.0)
    return rise + fall


def mfcc(audio: np.ndarray, sr: int = 16000, numcep: int = 13, nfilt: int = 26, preemph: float = 0.97,
         ceplifter: int = 22) -> np.ndarray:
    """python_speech_features.mfcc(audio, sr) at its defaults: (M, numcep) float64."""
    x = np.asarray(audio, np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"audio must be a non-empty mono signal; got shape {x.shape}")
    frame_len, step = int(round(0.025 * sr)), int(round(0.01 * sr))
    nfft = 1 << (frame_len - 1).bit_length()
    x = np.append(x[0], x[1:] - preemph * x[:-1])
    count = 1 if x.size <= frame_len else 1 + math.ceil((x.size - frame_len) / step)
    x = np.concatenate([x, np.zeros((count - 1) * step + frame_len - x.size)])
    frames = x[np.arange(frame_len)[None, :] + step * np.arange(count)[:, None]]
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    eps = np.finfo(float).eps
    energy = power.sum(1)
    energy = np.where(energy == 0, eps, energy)
    feat = power @ _filterbank(nfilt, nfft, sr).T
    feat = np.where(feat == 0, eps, feat)
    cep = scipy.fft.dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :numcep]
    cep = cep * (1 + ceplifter / 2.0 * np.sin(np.pi * np.arange(numcep) / ceplifter))
    cep[:, 0] = np.log(energy)
    return cep


# ----------------------------------------------------------------------------- scores


@dataclasses.dataclass(frozen=True)
class SyncResult:
    offset: int  # frames; 0 in sync, > 0 when the audio leads the video (lip frame i matches audio frame i - offset)
    confidence: float  # Sync-C (LSE-C): median - minimum of the mean distances
    min_distance: float  # Sync-D (LSE-D)
    distances: np.ndarray  # (2 vshift + 1,) mean distance per shift


def offset_search(lip: np.ndarray, aud: np.ndarray, vshift: int = VSHIFT) -> SyncResult:
    """syncnet_python's calc_pdist + evaluate on embeddings lip (N, D) and aud (N, D)."""
    lip, aud = np.asarray(lip, np.float64), np.asarray(aud, np.float64)
    if lip.ndim != 2 or lip.shape != aud.shape or lip.shape[0] == 0:
        raise ValueError(f"lip and audio embeddings must both be (N, D) with N >= 1; got {lip.shape} and {aud.shape}")
    n = lip.shape[0]
    padded = np.pad(aud, ((vshift, vshift), (0, 0)))
    windows = np.stack([padded[i:i + 2 * vshift + 1] for i in range(n)])  # (N, S, D)
    dists = np.linalg.norm(lip[:, None, :] - windows + 1e-6, axis=-1)  # torch pairwise_distance's eps
    mean = dists.mean(0)
    idx = int(np.argmin(mean))
    median = np.sort(mean)[(mean.size - 1) // 2]  # torch.median: the lower middle value
    return SyncResult(vshift - idx, float(median - mean[idx]), float(mean[idx]), mean)


def sync_windows(num_frames: int, num_samples: int) -> int:
    """How many 5-frame windows the reference scores: min(frames, samples // 640) - 5."""
    return min(num_frames, num_samples // SAMPLES_PER_FRAME) - WINDOW


def mfcc_windows(cepstra: np.ndarray, count: int) -> np.ndarray:
    """(count, 13, 20, 1) MFCC patches, one per window (4 MFCC frames per video frame)."""
    return np.stack([cepstra[4 * v:4 * v + MFCC_WINDOW].T for v in range(count)])[..., None].astype(np.float32)


def frame_windows(frames: np.ndarray, start: int, stop: int) -> np.ndarray:
    """(stop - start, 5, H, W, 3) stacks of consecutive frames."""
    return np.stack([frames[v:v + WINDOW] for v in range(start, stop)])
