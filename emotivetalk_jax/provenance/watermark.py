"""A watermark in the pixels: a faint keyed flicker that a correlation over the clip finds.

Frame t of a marked video gets `AMPLITUDE * sum_k s_k[t] P_k(u, v) / sqrt(K)` added to R, G
and B alike (luma only), where
* P_1 .. P_K (K = `PATTERNS`) are smooth keyed patterns over the frame in normalised
  coordinates u, v in [0, 1], each a sum of `WAVES` cosines of 1 to 3.5 cycles per frame side
  (frequencies at least 0.5 cycles apart: roughly orthogonal), unit rms: they survive scaling,
  blur and the coarse quantisers of H.264, and mean the same at any frame size;
* s_k[t] = +-1 are keyed pseudo-random signs, one per pattern for every `HOLD` frames (a sign
  held two frames outlives H.264's inter prediction better, measured), repeating every `PERIOD`
  frames (t counts from the video's first frame).
The key is fixed and public (`KEY`): anyone can test a video. The bits come from SHA-256 (not
a numpy generator, whose streams may change between numpy versions).

Detection (`detect_frames`): the luma at a working size, high-passed in time (a frame minus the
mean of the 5 around it: content moves slowly, the signs flip at random), weighted per pixel by
the inverse of its temporal variance, projected on each P_k as seen through each crop
hypothesis (`CROPS`: symmetric crops up to 20% a side), summed per sign symbol, and correlated
with the signs at every temporal offset (a trimmed clip starts anywhere in the period). For one
hypothesis the correlation c = sum s g is a sum of terms g the video fixes with signs drawn
independently of any unmarked video, so Hoeffding's inequality bounds its tail whatever the
content: P(c >= z ||g||) <= exp(-z^2 / 2). The p-value multiplies that by the number of
hypotheses searched (Bonferroni). z is at most about sqrt(0.8 K x frames / HOLD): the K
patterns give a 2 s clip (50 frames) room for p-values far below 1e-6.

Shapes: frames (F, H, W, 3) uint8.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math

import numpy as np

KEY = b"emotivetalk_jax watermark v1"
PERIOD = 128  # frames after which the signs repeat (5.1 s at 25 fps)
HOLD = 2  # frames per sign
PATTERNS = 12  # K: spatial patterns, each with its own signs
WAVES = 2  # cosines per pattern
AMPLITUDE = 1.6  # rms of the added pattern, in 8-bit levels
WORK = 64  # the detector's working size (pixels a side)
CROPS = tuple(i * 0.05 for i in range(5))  # crop hypotheses per axis: 0 .. 20% off each side
THRESHOLD_P = 1e-6  # a watermark is reported below this p-value
_HALF_WINDOW = 2  # the temporal high-pass: a frame minus the mean of frames t-2 .. t+2
_MAX_CYCLES = 3.5


def _bits(label: bytes, n: int) -> np.ndarray:
    """n keyed pseudo-random bytes (SHA-256 in counter mode) as uint8."""
    out = b"".join(hashlib.sha256(KEY + label + i.to_bytes(4, "big")).digest() for i in range(-(-n // 32)))
    return np.frombuffer(out[:n], np.uint8)


@functools.cache
def signs() -> np.ndarray:
    """s: (K, PERIOD // HOLD) +-1, one per pattern and symbol."""
    n = PERIOD // HOLD
    return np.where(_bits(b"/signs", PATTERNS * n) & 1, 1.0, -1.0).reshape(PATTERNS, n)


def _waves() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fx, fy, phase), each (K, WAVES): keyed frequencies in the low band, drawn afresh until no two
    are closer than 0.5 cycles (so the patterns stay nearly orthogonal)."""
    n = PATTERNS * WAVES
    raw = _bits(b"/waves", 3 * n * 4 * 8).reshape(-1, 3, 4).astype(np.float64)
    uni = raw @ (256.0 ** -np.arange(1, 5))  # (draws, 3) uniform in [0, 1)
    radius = 1.0 + (_MAX_CYCLES - 1.0) * uni[:, 0]
    angle = np.pi * uni[:, 1]  # half the circle: a wave and its opposite are the same cosine
    f = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)
    keep: list[int] = []
    for i in range(len(f)):
        if all(min(np.linalg.norm(f[i] - f[j]), np.linalg.norm(f[i] + f[j])) >= 0.5 for j in keep):
            keep.append(i)
        if len(keep) == n:
            break
    if len(keep) < n:
        raise AssertionError(f"{n} waves 0.5 cycles apart do not fit below {_MAX_CYCLES} cycles")
    k = np.asarray(keep)
    shape = (PATTERNS, WAVES)
    return f[k, 0].reshape(shape), f[k, 1].reshape(shape), (2 * np.pi * uni[k, 2]).reshape(shape)


def patterns(height: int, width: int, window: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)) -> np.ndarray:
    """P: (K, height, width) float32 sampled at pixel centres of `window` = (u0, v0, u1, v1), the
    part of the original frame the pixels show (the whole frame by default); each of unit rms
    over the whole frame."""
    return (_cosines(height, width, window) / _rms()[:, None, None]).astype(np.float32)


@functools.cache
def _rms() -> np.ndarray:
    return np.sqrt(np.mean(_cosines(256, 256, (0.0, 0.0, 1.0, 1.0)) ** 2, axis=(1, 2)))


def _cosines(height: int, width: int, window: tuple[float, float, float, float]) -> np.ndarray:
    fx, fy, ph = (a[..., None, None] for a in _waves())
    u0, v0, u1, v1 = window
    u = u0 + (u1 - u0) * (np.arange(width) + 0.5) / width
    v = v0 + (v1 - v0) * (np.arange(height) + 0.5) / height
    return np.cos(2 * np.pi * (fx * u[None, None, None, :] + fy * v[None, None, :, None]) + ph).sum(1)


def frame_signs(start: int, count: int) -> np.ndarray:
    """s_k[t] for frames start .. start + count - 1: (K, count)."""
    return signs()[:, (np.arange(start, start + count) // HOLD) % (PERIOD // HOLD)]


def embed(frames: np.ndarray, start: int = 0, amplitude: float = AMPLITUDE) -> np.ndarray:
    """Marked copy of frames (F, H, W, 3) uint8; `start`: index of frames[0] in the video (a
    stream marks its windows as they come)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3), got {frames.shape}")
    f, h, w, _ = frames.shape
    scale = amplitude / math.sqrt(PATTERNS)
    delta = np.einsum("kf,khw->fhw", frame_signs(start, f) * scale, patterns(h, w))
    return np.clip(np.round(frames.astype(np.float32) + delta[..., None]), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class Detection:
    detected: bool
    score: float  # the largest z over the hypotheses searched
    p_value: float  # Bonferroni over `hypotheses`, from Hoeffding's bound
    frames: int
    offset: int | None  # the clip's first frame in the sign period, best hypothesis
    crop: tuple[float, float] | None  # (x, y) fraction cropped off each side, best hypothesis
    hypotheses: int

    @property
    def log10_p(self) -> float:
        """log10 of the p-value, finite where the p-value underflows to 0."""
        return min(0.0, math.log10(self.hypotheses) - self.score ** 2 / (2 * math.log(10)))

    def to_json(self) -> dict:
        return {"detected": self.detected, "score": round(self.score, 3), "p_value": float(f"{self.p_value:.3g}"),
                "log10_p": round(self.log10_p, 2), "frames": self.frames, "offset": self.offset,
                "crop": None if self.crop is None else [round(c, 3) for c in self.crop],
                "hypotheses": self.hypotheses}


def luma(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) -> (F, H, W) float32 BT.601 luma."""
    return np.asarray(frames, np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)


def _high_pass(y: np.ndarray) -> np.ndarray:
    """Each frame minus the mean of the frames within `_HALF_WINDOW` of it (fewer at the ends)."""
    c = np.concatenate([np.zeros((1,) + y.shape[1:]), np.cumsum(y, 0)])
    t = np.arange(len(y))
    lo, hi = np.maximum(t - _HALF_WINDOW, 0), np.minimum(t + _HALF_WINDOW + 1, len(y))
    return y - (c[hi] - c[lo]) / (hi - lo)[:, None, None]


def detect_frames(frames: np.ndarray, threshold: float = THRESHOLD_P) -> Detection:
    """Test frames (F, H, W, 3) (best at WORK x WORK, as `detect.detect_file` reads them)."""
    y = luma(frames).astype(np.float64)
    n = len(y)
    hypotheses = len(CROPS) ** 2 * PERIOD
    if n < 2:
        return Detection(False, 0.0, 1.0, n, None, None, hypotheses)
    d = _high_pass(y)
    weight = 1.0 / (d.var(0) + 1.0)  # quiet pixels count more (a function of the video alone)
    h, w = y.shape[1:]
    windows = [(cx, cy, 1 - cx, 1 - cy) for cy in CROPS for cx in CROPS]
    proj = np.stack([patterns(h, w, win) * weight for win in windows])  # (C, K, H, W)
    m = np.einsum("ckhw,fhw->ckf", proj, d)  # per-frame projections
    s = signs()
    nsym = s.shape[1]
    shifted = np.stack([np.roll(s, -j, axis=1) for j in range(nsym)])  # (j, K, symbols)
    z = np.zeros((len(windows), PERIOD))  # offset r + HOLD j: frame t carries symbol (t + r) // HOLD + j
    for r in range(HOLD):
        g = np.zeros(m.shape[:2] + (nsym,))
        np.add.at(g.transpose(2, 0, 1), ((np.arange(n) + r) // HOLD) % nsym, m.transpose(2, 0, 1))
        norm = np.sqrt((g ** 2).sum((1, 2)))[:, None]
        c = np.einsum("cki,jki->cj", g, shifted)
        z[:, r::HOLD] = np.where(norm > 0, c / np.maximum(norm, 1e-30), 0.0)
    ci, off = np.unravel_index(int(np.argmax(z)), z.shape)
    best = float(max(z[ci, off], 0.0))
    p = min(1.0, hypotheses * math.exp(-0.5 * best * best))
    return Detection(p < threshold, best, p, n, int(off), windows[ci][:2], hypotheses)


__all__ = ["AMPLITUDE", "CROPS", "Detection", "KEY", "PERIOD", "THRESHOLD_P", "WORK", "detect_frames", "embed",
           "frame_signs", "luma", "patterns", "signs"]
