"""Voice statistics of an utterance for the speech-emotion head (`speech.py`, feature "voice").

Shape legend: S samples (16 kHz), T analysis frames (10 ms), F = `VOICE_DIM` statistics.

An emotion is heard in the pitch range, the phrase-final rise or fall, a trembling pitch,
the tempo, loudness and its swing, and breathiness; most of these are relative to the speaker
(a held-out voice has an unknown resting pitch), so pitch is mostly read in semitones around
the utterance's own median. One pass computes, per 10 ms frame, F0 (librosa's YIN), RMS level,
spectral flatness and tilt, then over the utterance:

  0-11  the 12 prosody statistics of `data.measure.prosody_features` (log-F0 mean / std /
        range, energy mean / std / max, voiced and loud shares, peaks per second, tilt, peak
        level, mean |d log-F0|), from the same F0 and RMS tracks
  12-14 pitch: std, 5-95 % range, mean absolute change per frame (semitones)
  15    tremor: std of the pitch around its 150 ms moving average (semitones)
  16    tremor band: the largest amplitude of a 4-8 Hz sinusoid fitted to that residual
  17-18 phrase end and declination: least-squares pitch movement over the utterance's last
        0.8 s (a ramp) and slope (semitones per s), beside a level
  19-21 loudness: 95th-percentile level (dB), its rise over the quietest frames, std over speech
  22-23 voice quality: median flatness and tilt of voiced frames
  24    flatness of loud unvoiced frames
  25    harmonicity: median normalised autocorrelation of voiced frames at their pitch period
        (aspiration noise lowers it)
  26-28 rhythm: mean voiced-run length (s), voiced runs per second of speech, pause share of
        the speech span
  29-30 tempo: syllable nuclei (peaks of the 200-3000 Hz level, 3 dB prominent) per second of
        the speech span, and the median interval between neighbouring nuclei (s)
  31-32 pauses: silent gaps of 120 ms or more inside the speech span per second, their mean length
  33    vocal tract: log spectral centroid (0-4 kHz) of voiced frames (longer tracts, lower
        formants: with 42 it tells a low voice from a low-pitched mood)
  34-37 pitch distribution: 10th, 25th, 75th and 90th percentiles (semitones around the median)
  38-39 phrase end: median pitch of the last 0.3 s of voiced frames, and the highest pitch of the
        last 0.8 s of the utterance (semitones around the median)
  40    tremor contrast: the 4-8 Hz amplitude over the residual's standard deviation
  41    voiced loudness: mean level of voiced frames (dB)
  42    absolute pitch: median F0 in semitones above 100 Hz
  43    high band: level of 4-8 kHz against 0-4 kHz in voiced frames (dB)
  44    level swing: 90th minus 10th percentile of the voiced frames' level (dB)

A head trained on the first 29 statistics (`in_dim` 29, the first shipped head) reads the
first 29 of these, which are unchanged.
"""

from __future__ import annotations

import numpy as np

VOICE_DIM = 45
VOICE_WIDTHS = (29, VOICE_DIM)  # heads read the first in_dim statistics
_HOP = 160  # 10 ms


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    k = np.ones(width) / width
    return np.convolve(np.pad(x, (width // 2, width - 1 - width // 2), mode="edge"), k, mode="valid")


def _prosody(y: np.ndarray, f0: np.ndarray, rms: np.ndarray, sr: int) -> np.ndarray:
    """`data.measure.prosody_features` from precomputed tracks (the same function)."""
    from emotivetalk_jax.data.measure import prosody_from_tracks

    return prosody_from_tracks(y, f0, rms, sr)


def _band_amplitude(sec: np.ndarray, x: np.ndarray, lo: float = 4.0, hi: float = 8.0) -> float:
    """The largest amplitude of a sinusoid in [lo, hi] Hz fitted (least squares) to x(sec)."""
    best = 0.0
    for f in np.arange(lo, hi + 1e-6, 0.25):
        design = np.stack([np.cos(2 * np.pi * f * sec), np.sin(2 * np.pi * f * sec)], 1)
        coef = np.linalg.lstsq(design, x, rcond=None)[0]
        best = max(best, float(np.hypot(*coef)))
    return best


def _harmonicity(y: np.ndarray, f0: np.ndarray, frames: np.ndarray, sr: int, width: int = 640) -> float:
    """Median over `frames` (10 ms indices) of the normalised autocorrelation at the F0 period."""
    vals = []
    for i in frames[:: max(len(frames) // 60, 1)]:  # at most about 60 frames
        lag = int(round(sr / f0[i]))
        a = i * _HOP - width // 2
        if a < 0 or a + width + lag > len(y):
            continue
        x0, x1 = y[a : a + width], y[a + lag : a + lag + width]
        den = np.sqrt(np.dot(x0, x0) * np.dot(x1, x1))
        if den > 0:
            vals.append(np.dot(x0, x1) / den)
    return float(np.median(vals)) if vals else 0.0


def _tempo(out: np.ndarray, spec: np.ndarray, freqs: np.ndarray, loud: np.ndarray, sr: int) -> None:
    """29-32: syllable nuclei and pauses (see the module docstring)."""
    from scipy.signal import find_peaks

    band = 10 * np.log10(spec[(freqs >= 200) & (freqs <= 3000)].sum(0) + 1e-10)
    band = _moving_average(band, 3)
    first, last = np.flatnonzero(loud)[[0, -1]]
    span = max((last - first + 1) * _HOP / sr, 0.1)
    peaks, _ = find_peaks(band, prominence=3.0, height=band.max() - 30)
    peaks = peaks[(peaks >= first) & (peaks <= last)]
    out[29] = len(peaks) / span
    gaps = np.diff(peaks) * _HOP / sr
    gaps = gaps[gaps < 0.6]
    out[30] = np.median(gaps) if gaps.size else 0.0
    quiet = ~loud[first : last + 1]
    edges = np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]]))
    lengths = (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)) * _HOP / sr
    pauses = lengths[lengths >= 0.12]
    out[31] = len(pauses) / span
    out[32] = pauses.mean() if pauses.size else 0.0


def _pitch_shape(out: np.ndarray, st: np.ndarray, sec: np.ndarray, duration: float) -> None:
    """34-39: pitch percentiles and phrase end, in semitones around the median (`st` at `sec`)."""
    out[34:38] = np.percentile(st, [10, 25, 75, 90])
    tail = st[sec >= sec[-1] - 0.3]
    out[38] = np.median(tail)
    end = st[sec >= duration - 0.8]
    out[39] = end.max() if end.size else 0.0


def voice_features(wave: np.ndarray, sr: int = 16000) -> np.ndarray:
    """(S,) waveform -> (F,) statistics (see the module docstring); zeros where undefined."""
    import librosa

    y = np.asarray(wave, np.float32).reshape(-1)
    if y.size < 2048:
        y = np.pad(y, (0, 2048 - y.size))
    f0 = librosa.yin(y, fmin=70, fmax=500, sr=sr, frame_length=1024, hop_length=_HOP)
    rms = librosa.feature.rms(y=y, frame_length=400, hop_length=_HOP)[0]
    spec = np.abs(librosa.stft(y, n_fft=512, hop_length=_HOP, win_length=400)) ** 2  # (257, T)
    t = min(len(f0), len(rms), spec.shape[1])
    f0, rms, spec = f0[:t], rms[:t], spec[:, :t]
    out = np.zeros(VOICE_DIM, np.float32)
    out[:12] = _prosody(y, f0, rms, sr)
    db = 20 * np.log10(rms + 1e-6)
    loud = db > db.max() - 25
    voiced = loud & (f0 < 480)
    flat = np.exp(np.mean(np.log(spec + 1e-12), 0)) / (np.mean(spec, 0) + 1e-12)
    freqs = np.fft.rfftfreq(512, 1 / sr)
    tilt = np.log(spec[freqs > 2000].sum(0) + 1e-9) - np.log(spec[freqs <= 2000].sum(0) + 1e-9)
    if voiced.sum() > 5:
        idx = np.flatnonzero(voiced)
        sec = idx * _HOP / sr
        st = 12 * np.log2(f0[idx] / np.median(f0[idx]))
        out[12] = st.std()
        out[13] = np.percentile(st, 95) - np.percentile(st, 5)
        runs = np.diff(idx) == 1  # steps inside a voiced run
        out[14] = np.abs(np.diff(st))[runs].mean() if runs.any() else 0.0
        resid = st - _moving_average(st, 15)
        out[15] = resid.std()
        out[16] = _band_amplitude(sec, resid)
        # pitch = level + declination * time + movement * (a ramp over the last 0.8 s of the utterance)
        ramp = np.clip((sec - (len(y) / sr - 0.8)) / 0.8, 0, 1)
        design = np.stack([np.ones_like(sec), sec - sec.mean(), ramp], 1)
        coef = np.linalg.lstsq(design, st, rcond=None)[0] if ramp.any() else np.zeros(3)
        out[17], out[18] = coef[2], coef[1]
        out[22] = np.median(flat[idx])
        out[23] = np.median(tilt[idx])
        out[25] = _harmonicity(y, f0, idx, sr)
        edges = np.diff(np.concatenate([[0], voiced.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        span = (np.flatnonzero(loud)[-1] - np.flatnonzero(loud)[0] + 1) * _HOP / sr
        out[26] = np.mean(ends - starts) * _HOP / sr
        out[27] = len(starts) / max(span, 0.1)
        out[28] = 1 - loud.sum() * _HOP / sr / max(span, 0.1)
        _tempo(out, spec, freqs, loud, sr)
        _pitch_shape(out, st, sec, len(y) / sr)
        low = spec[freqs < 4000][:, idx]
        out[33] = np.log(np.median((low * freqs[freqs < 4000, None]).sum(0) / (low.sum(0) + 1e-12)) + 1e-6)
        out[40] = out[16] / (out[15] * np.sqrt(2) + 1e-6)
        out[41] = db[idx].mean()
        out[42] = 12 * np.log2(np.median(f0[idx]) / 100)
        out[43] = 10 * np.log10((spec[freqs >= 4000][:, idx].sum() + 1e-12) / (spec[freqs < 4000][:, idx].sum() + 1e-12))
        out[44] = np.percentile(db[idx], 90) - np.percentile(db[idx], 10)
    out[19] = np.percentile(db, 95)
    out[20] = np.percentile(db, 95) - np.percentile(db, 5)
    out[21] = db[loud].std() if loud.sum() > 3 else 0.0
    unvoiced_loud = loud & ~voiced
    out[24] = np.median(flat[unvoiced_loud]) if unvoiced_loud.sum() > 3 else 0.0
    return out
