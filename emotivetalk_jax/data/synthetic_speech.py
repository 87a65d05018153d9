"""Source-filter speech for the synthetic talking-face domain (numpy only).

An utterance is a random sequence of words made of (consonant, vowel) syllables,
with pauses. A glottal pulse train (pitch F0) and noise are shaped per 20 ms frame by
formant resonances (F1..F3) in the STFT domain and overlap-added. The articulation
that drives the face comes from the same phone targets:

* mouth opening follows the vowel's openness, read from F1 (open vowels have a high F1);
* mouth width follows rounding / spreading, read from F2 (front spread vowels: high F2);
* bilabials (p, b, m) close the mouth, other consonants nearly close it, pauses close it.

Prosody (F0 level and range, tempo, energy, breathiness, tremor) depends on the
emotion and its intensity, so emotion is recoverable from the audio alone.
Shapes: N samples at 16 kHz, C control frames at 200 Hz (hop 80 samples).
"""

from __future__ import annotations

import dataclasses

import numpy as np

SR = 16000
FPS = 25
HOP = 80  # control-rate hop: 5 ms
CONTROL_RATE = SR // HOP
EMOTIONS = ("neutral", "happy", "angry", "sad", "surprised", "fearful", "disgusted", "worried")

# vowel -> (F1, F2, F3) in Hz (Peterson & Barney style averages).
VOWELS = {
    "a": (730.0, 1090.0, 2440.0),
    "ae": (660.0, 1720.0, 2410.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (270.0, 2290.0, 3010.0),
    "ih": (390.0, 1990.0, 2550.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (300.0, 870.0, 2240.0),
    "uh": (640.0, 1190.0, 2390.0),
}
# consonant -> (kind, noise band lo, hi (Hz), voiced, mouth opening target)
CONSONANTS = {
    "p": ("stop", 300.0, 6000.0, False, 0.0),
    "b": ("stop", 200.0, 4000.0, True, 0.0),
    "m": ("nasal", 0.0, 0.0, True, 0.0),
    "t": ("stop", 3000.0, 7000.0, False, 0.12),
    "d": ("stop", 2500.0, 6000.0, True, 0.12),
    "n": ("nasal", 0.0, 0.0, True, 0.12),
    "k": ("stop", 1500.0, 3500.0, False, 0.15),
    "g": ("stop", 1200.0, 3000.0, True, 0.15),
    "s": ("fric", 4000.0, 7800.0, False, 0.08),
    "sh": ("fric", 2200.0, 5000.0, False, 0.10),
    "f": ("fric", 1000.0, 7800.0, False, 0.04),
    "l": ("approx", 0.0, 0.0, True, 0.2),
}


def vowel_openness(f1: float | np.ndarray) -> np.ndarray:
    """Mouth opening in [0, 1] from F1: 250 Hz -> 0, 750 Hz -> 1."""
    return np.clip((np.asarray(f1) - 250.0) / 500.0, 0.0, 1.0)


def vowel_width(f2: float | np.ndarray) -> np.ndarray:
    """Mouth width in [0, 1] from F2: rounded (low F2) narrow, spread (high F2) wide."""
    return np.clip((np.asarray(f2) - 800.0) / 1500.0, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Prosody:
    """Emotion-dependent speaking style (multipliers on the speaker's defaults)."""

    f0_level: float  # x speaker F0
    f0_range: float  # semitone range of accents
    tempo: float  # x syllable rate
    energy: float  # x amplitude
    breathiness: float  # aspiration noise share
    tremor: float  # F0 vibrato depth (semitones) at 6 Hz
    contour: float  # phrase-final pitch movement (semitones, + rising)


PROSODY = {
    "neutral": Prosody(1.00, 2.0, 1.00, 1.00, 0.05, 0.0, -2.0),
    "happy": Prosody(1.25, 5.0, 1.10, 1.25, 0.05, 0.0, 1.0),
    "angry": Prosody(1.15, 3.5, 1.15, 1.80, 0.02, 0.0, -3.0),
    "sad": Prosody(0.85, 1.0, 0.72, 0.55, 0.25, 0.0, -3.0),
    "surprised": Prosody(1.40, 7.0, 1.00, 1.35, 0.05, 0.0, 5.0),
    "fearful": Prosody(1.35, 2.5, 1.30, 0.80, 0.15, 0.8, 2.0),
    "disgusted": Prosody(0.90, 2.5, 0.80, 0.95, 0.12, 0.0, -4.0),
    "worried": Prosody(1.10, 1.5, 0.90, 0.70, 0.15, 0.4, 0.0),
}


@dataclasses.dataclass(frozen=True)
class Voice:
    """Speaker voice: base pitch (Hz) and vocal-tract scale (formant multiplier)."""

    f0: float
    tract: float

    @staticmethod
    def sample(rng: np.random.Generator) -> Voice:
        if rng.random() < 0.5:
            return Voice(float(rng.uniform(95, 140)), float(rng.uniform(0.9, 1.0)))
        return Voice(float(rng.uniform(170, 240)), float(rng.uniform(1.05, 1.18)))


@dataclasses.dataclass
class Utterance:
    """Speech and its articulation. Tracks are at 200 Hz (C control frames)."""

    audio: np.ndarray  # (N,) float32 in [-1, 1]
    opening: np.ndarray  # (C,) mouth opening in [0, 1]
    width: np.ndarray  # (C,) mouth width in [0, 1]
    f0: np.ndarray  # (C,) Hz, 0 where unvoiced
    phones: list[tuple[str, float, float]]  # (phone, start s, end s); "_" = pause

    @property
    def duration(self) -> float:
        return len(self.audio) / SR

    def frame_tracks(self, num_frames: int, fps: int = FPS) -> tuple[np.ndarray, np.ndarray]:
        """Opening and width averaged over each video frame's time span: (F,), (F,)."""
        return _frame_average(self.opening, num_frames, fps), _frame_average(self.width, num_frames, fps)


def _frame_average(track: np.ndarray, num_frames: int, fps: int) -> np.ndarray:
    per = CONTROL_RATE / fps
    edges = np.round(np.arange(num_frames + 1) * per).astype(int)
    edges = np.minimum(edges, len(track))
    cs = np.concatenate([[0.0], np.cumsum(track)])
    n = np.maximum(edges[1:] - edges[:-1], 1)
    return ((cs[edges[1:]] - cs[edges[:-1]]) / n).astype(np.float32)


def sample_phones(rng: np.random.Generator, duration: float, tempo: float) -> list[tuple[str, float]]:
    """Random words of CV syllables with pauses, filling about `duration` seconds."""
    vowels, cons = list(VOWELS), list(CONSONANTS)
    phones: list[tuple[str, float]] = [("_", rng.uniform(0.15, 0.3))]
    t = phones[0][1]
    end = duration - rng.uniform(0.15, 0.3)
    while True:
        word = []
        for _ in range(int(rng.integers(1, 4))):
            if rng.random() < 0.85:
                word.append((cons[rng.integers(len(cons))], rng.uniform(0.05, 0.09) / tempo))
            word.append((vowels[rng.integers(len(vowels))], rng.uniform(0.11, 0.22) / tempo))
        wlen = sum(d for _, d in word)
        if t + wlen > end:
            break
        phones += word
        t += wlen
        gap = rng.uniform(0.25, 0.45) if rng.random() < 0.2 else rng.uniform(0.0, 0.12)
        if gap > 0.03:
            phones.append(("_", gap / tempo))
            t += gap / tempo
    phones.append(("_", max(duration - t, 0.0)))
    return phones


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    if width <= 1:
        return x
    k = np.hanning(width + 2)[1:-1]
    k /= k.sum()
    pad = np.pad(x, (width, width), mode="edge")
    return np.convolve(pad, k, mode="same")[width:-width]


def _resonance(f: np.ndarray, fc: np.ndarray, bw: np.ndarray) -> np.ndarray:
    """|H(f)| of a 2-pole resonator, unit gain at DC. f: (K,), fc/bw: (C,) -> (C, K)."""
    fc, bw = fc[:, None], bw[:, None]
    return fc**2 / np.sqrt((fc**2 - f[None] ** 2) ** 2 + (bw * f[None]) ** 2)


def synthesize(
    rng: np.random.Generator,
    duration: float,
    voice: Voice,
    emotion: str,
    intensity: float = 1.0,
    snr_db: float = 40.0,
) -> Utterance:
    """Speak a random utterance of `duration` seconds in `emotion` at `intensity` (0..1)."""
    if emotion not in PROSODY:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {', '.join(EMOTIONS)}")
    base, emo = PROSODY["neutral"], PROSODY[emotion]
    p = Prosody(*[b + intensity * (e - b) for b, e in zip(dataclasses.astuple(base), dataclasses.astuple(emo))])
    phones = sample_phones(rng, duration, p.tempo)
    n_ctrl = int(round(duration * CONTROL_RATE))
    n = n_ctrl * HOP

    # --- phone targets at control rate ---
    open_t = np.zeros(n_ctrl)
    width_t = np.full(n_ctrl, np.nan)
    formants = np.full((n_ctrl, 3), np.nan)
    voiced = np.zeros(n_ctrl)
    noise_amp = np.zeros(n_ctrl)
    noise_band = np.zeros((n_ctrl, 2))
    stress = np.zeros(n_ctrl)
    spans: list[tuple[str, float, float]] = []
    t0 = 0.0
    for ph, dur in phones:
        a, b = int(round(t0 * CONTROL_RATE)), int(round((t0 + dur) * CONTROL_RATE))
        b = min(b, n_ctrl)
        spans.append((ph, round(t0, 4), round(t0 + dur, 4)))
        if ph in VOWELS:
            f1, f2, f3 = VOWELS[ph]
            open_t[a:b] = 0.1 + 0.9 * vowel_openness(f1)
            width_t[a:b] = vowel_width(f2)
            formants[a:b] = (f1, f2, f3)
            voiced[a:b] = 1.0
            stress[a:b] = rng.uniform(-1, 1)
        elif ph in CONSONANTS:
            kind, lo, hi, vc, op = CONSONANTS[ph]
            open_t[a:b] = op
            if kind in ("stop", "fric"):
                m = b - a
                burst = np.zeros(m)
                if kind == "stop":  # closure then burst in the last 40%
                    burst[int(m * 0.6) :] = 1.0
                    voiced[a : a + int(m * 0.6)] = 0.15 if vc else 0.0
                else:
                    burst[:] = 0.6
                    voiced[a:b] = 0.3 if vc else 0.0
                noise_amp[a:b] = burst
                noise_band[a:b] = (lo, hi)
            else:  # nasal / approximant: voiced murmur, low F1
                voiced[a:b] = 0.6
                formants[a:b] = (250.0, 1200.0 if kind == "nasal" else 1100.0, 2500.0)
                if ph == "m":
                    width_t[a:b] = 0.45
        t0 += dur
    # coarticulation: carry formants / width through consonants and pauses, then smooth
    formants = _ffill(formants, (500.0, 1500.0, 2500.0))
    width_t = _ffill(width_t[:, None], (0.5,))[:, 0]
    opening = np.clip(_smooth(open_t, 12), 0.0, 1.0)
    width = np.clip(_smooth(width_t, 14), 0.0, 1.0)
    formants = np.stack([_smooth(formants[:, i], 8) for i in range(3)], -1) * voice.tract
    voiced = _smooth(voiced, 4)
    noise_amp = _smooth(noise_amp, 2)

    # --- pitch: declination + word accents + phrase-final contour + tremor ---
    tt = np.arange(n_ctrl) / CONTROL_RATE
    semis = -1.5 * tt / max(duration, 1e-3) + p.f0_range * _smooth(stress, 40)
    final = np.clip((tt - (duration - 0.8)) / 0.8, 0, 1)
    semis += p.contour * final + p.tremor * np.sin(2 * np.pi * 6.0 * tt + rng.uniform(0, 6.28))
    f0 = voice.f0 * p.f0_level * 2.0 ** (semis / 12.0)

    # --- sources at sample rate ---
    f0_s = np.interp(np.arange(n) / HOP, np.arange(n_ctrl), f0)
    f0_s *= 1.0 + 0.01 * _smooth(rng.standard_normal(n // 160 + 2), 3).repeat(160)[:n]  # jitter
    phase = np.cumsum(f0_s / SR)
    frac = phase % 1.0
    # Rosenberg glottal flow derivative: opening 0..0.4, closing 0.4..0.6, closed after
    glot = np.where(frac < 0.4, np.sin(np.pi * frac / 0.4), np.where(frac < 0.6, -2 * np.sin(np.pi * (frac - 0.4) / 0.4), 0.0))
    noise = rng.standard_normal(n)

    # --- STFT-domain filtering and overlap-add ---
    win_len, n_fft = 320, 512
    window = np.hanning(win_len + 1)[:-1]
    freqs = np.fft.rfftfreq(n_fft, 1.0 / SR)
    pad = win_len
    src_v = np.pad(glot, (pad, pad))
    src_n = np.pad(noise, (pad, pad))
    starts = np.arange(n_ctrl) * HOP + pad - win_len // 2
    idx = starts[:, None] + np.arange(win_len)[None]
    fv = np.fft.rfft(src_v[idx] * window, n_fft)
    fn = np.fft.rfft(src_n[idx] * window, n_fft)
    bw = np.array([80.0, 100.0, 150.0]) * (1.0 + 2.0 * p.breathiness)
    env = np.ones((n_ctrl, len(freqs)))
    for k in range(3):
        env *= _resonance(freqs, formants[:, k], np.full(n_ctrl, bw[k]))
    env *= 1.0 / (1.0 + (freqs[None] / 4000.0) ** 2)  # higher poles / lip radiation balance
    band = ((freqs[None] >= noise_band[:, :1]) & (freqs[None] <= noise_band[:, 1:])).astype(float)
    amp = p.energy * (1.0 + 0.25 * np.clip(_smooth(stress, 20), -1, 1))
    spec = fv * env * (voiced * amp)[:, None]
    spec += fn * env * (voiced * amp * p.breathiness * 3.0)[:, None]
    spec += fn * band * (noise_amp * amp * 0.6)[:, None]
    frames = np.fft.irfft(spec, n_fft)[:, :win_len]
    out = np.zeros(n + 2 * pad)
    np.add.at(out, idx, frames)
    audio = out[pad : pad + n] * (HOP / window.sum() * 0.5 * 0.15)
    audio += rng.standard_normal(n) * 10 ** (-snr_db / 20) * 0.05
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
    f0_out = np.where(voiced > 0.5, f0, 0.0).astype(np.float32)
    return Utterance(audio, opening.astype(np.float32), width.astype(np.float32), f0_out, spans)


def _ffill(x: np.ndarray, default: tuple[float, ...]) -> np.ndarray:
    """Forward-fill NaN rows (then back-fill the start; `default` if all NaN)."""
    x = x.copy()
    ok = ~np.isnan(x[:, 0])
    if not ok.any():
        x[:] = default
        return x
    idx = np.where(ok, np.arange(len(x)), 0)
    np.maximum.accumulate(idx, out=idx)
    first = np.argmax(ok)
    idx[:first] = first
    return x[idx]
