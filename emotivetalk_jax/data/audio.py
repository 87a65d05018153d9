"""Audio front end: file -> 16 kHz mono waveform -> encoder features -> one vector per video frame.

Shape legend: S samples, T encoder frames, N video frames, D feature width, W window.

Timing conventions (all documented here, tested in tests/test_audio_frontend.py):
- Sample n covers [n / sr, (n + 1) / sr). Video frame j covers [j / fps, (j + 1) / fps) and
  its centre is (j + 0.5) / fps. A clip of d seconds has `num_video_frames(d) = round(d * fps)`
  frames, halves rounded up.
- Encoder frame t (conv stack with total stride `s` and receptive field `r` samples; 320 and
  400 for wav2vec2 / WavLM, i.e. 20 ms hop, 25 ms field) sees samples [s t, s t + r), centre
  (s t + r / 2) / sr seconds.
- `features_to_frames` linearly interpolates the encoder frames at each video frame's centre,
  position p_j = ((j + 0.5) sr / fps - r / 2) / s in encoder-frame units, clamped to the
  first/last encoder frame. At 25 fps and 16 kHz: p_j = 2 j + 0.375, so video frame j is
  0.625 * feature[2j] + 0.375 * feature[2j + 1]: exactly the features around its own centre.
"""

from __future__ import annotations

import math
import os
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from emotivetalk_jax import validate
from emotivetalk_jax.validate import (  # the audio errors live with the other input checks
    AudioDecodeError,
    AudioError,
    AudioNotFoundError,
    AudioTooLongError,
    AudioTooShortError,
    EmptyAudioError,
    NonFiniteAudioError,  # noqa: F401 (re-exported: callers catch it from here)
)
from emotivetalk_jax.models.wav2vec2 import Wav2Vec2Model, conv_geometry, feature_lengths, select_layers

SAMPLE_RATE = 16000
NORM_EPS = 1e-7  # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm
_SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff"}


# ---------------------------------------------------------------------------- reading


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return data, int(sr)


def _parse_wav_stream(raw: bytes) -> tuple[np.ndarray, int]:
    """Float32 WAV from an ffmpeg pipe (sizes in the header may be unset): (S, channels), sr."""
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise ValueError("ffmpeg did not produce a WAV stream")
    pos, channels, sr = 12, None, None
    while pos + 8 <= len(raw):
        cid, size = raw[pos : pos + 4], struct.unpack("<I", raw[pos + 4 : pos + 8])[0]
        body = pos + 8
        if cid == b"fmt ":
            channels, sr = struct.unpack("<HI", raw[body + 2 : body + 8])
        elif cid == b"data":
            if channels is None:
                raise ValueError("WAV stream has data before its format chunk")
            end = len(raw) if size in (0, 0xFFFFFFFF) else min(len(raw), body + size)
            end = body + (end - body) // (4 * channels) * 4 * channels
            return np.frombuffer(raw[body:end], dtype="<f4").reshape(-1, channels), int(sr)
        pos = body + size + (size & 1)
    raise ValueError("WAV stream has no data chunk")


def _read_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-vn",
           "-f", "wav", "-acodec", "pcm_f32le", "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        reason = msg[-1] if msg else f"ffmpeg exit code {proc.returncode}"
        if "matches no streams" in proc.stderr.decode(errors="replace"):
            reason = "it has no audio track"
        raise ValueError(reason)
    return _parse_wav_stream(proc.stdout)


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE, *, what: str = "audio file") -> np.ndarray:
    """Mono float32 waveform at `sr` Hz from wav/flac/ogg (soundfile) or mp3/m4a/mp4/mov/mkv/webm
    (the ffmpeg binary bundled with imageio-ffmpeg; for videos, the first audio track).

    Channels are averaged; other rates are resampled with librosa (soxr). Not normalised.
    NaN / Inf samples are refused (`NonFiniteAudioError`): they would turn every frame black.
    """
    path = validate.check_file(path, what, error=AudioError, missing_error=AudioNotFoundError)
    errors = []
    readers = (_read_soundfile, _read_ffmpeg) if path.suffix.lower() in _SOUNDFILE_SUFFIXES else (_read_ffmpeg,)
    for reader in readers:
        try:
            data, file_sr = reader(path)
            break
        except Exception as e:  # noqa: BLE001 - every decoder failure becomes one AudioDecodeError
            errors.append(str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
    else:
        raise AudioDecodeError(
            f"cannot decode audio from {path} ({'; '.join(errors)}); pass a wav/flac/ogg/mp3 file or a video with sound"
        )
    if data.size == 0:
        raise EmptyAudioError(f"{path} contains no audio samples; pass a file with sound in it")
    validate.check_finite_audio(data, file_sr, f"{what} {path}")
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if file_sr != sr:
        import librosa

        wave = librosa.resample(wave, orig_sr=file_sr, target_sr=sr)
    return np.ascontiguousarray(wave, dtype=np.float32)


def check_audio_file(path, what: str = "audio", *, sr: int = 16000, fps: float = 25,
                     max_seconds: float = validate.MAX_AUDIO_SECONDS) -> np.ndarray:
    """Load and check an audio file (see `validate.check_wave`); long soundfile-readable files are
    refused from their header, before decoding."""
    p = validate.check_file(path, what, error=AudioError, missing_error=AudioNotFoundError)
    try:
        import soundfile

        info = soundfile.info(str(p))
        seconds = info.frames / info.samplerate if info.samplerate else 0.0
    except Exception:  # noqa: BLE001 - not soundfile-readable: ffmpeg decodes it below
        seconds = 0.0
    if seconds > max_seconds:
        raise AudioTooLongError(f"{what} {p} lasts {seconds:.1f} s, over the {max_seconds:g} s limit: "
                                f"{validate.AUDIO_LIMIT_REASON}")
    return validate.check_wave(load_audio(p, sr, what=what), what, sr=sr, fps=fps, max_seconds=max_seconds, path=p)


def normalize(wave: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over the utterance, eps 1e-7 (silence stays finite: all zeros)."""
    wave = np.asarray(wave, dtype=np.float64)
    return ((wave - wave.mean()) / np.sqrt(wave.var() + NORM_EPS)).astype(np.float32)


# ---------------------------------------------------------------------------- timing


def num_video_frames(duration_s: float, fps: float = 25) -> int:
    """Video frames for `duration_s` seconds of audio: round(duration * fps), halves rounded up."""
    return int(math.floor(duration_s * fps + 0.5))


def frame_positions(num_frames: int, *, fps: float, sr: int, stride: int, field: int) -> np.ndarray:
    """(N,) position of each video frame's centre in encoder-frame units (see module docstring)."""
    return ((np.arange(num_frames) + 0.5) * sr / fps - field / 2) / stride


def features_to_frames(features, num_frames: int, *, fps: float = 25, sr: int = SAMPLE_RATE,
                       stride: int = 320, field: int = 400):
    """(..., T, D) encoder features -> (..., N, D): linear interpolation at the video frames'
    centres. numpy in, numpy out; a jax.Array in (also traced, as in training) gives a jax.Array."""
    t = features.shape[-2]
    if not isinstance(features, jax.Array):
        features = np.asarray(features)
    pos = np.clip(frame_positions(num_frames, fps=fps, sr=sr, stride=stride, field=field), 0, t - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, t - 1)
    w = (pos - i0)[:, None].astype(features.dtype)
    return (1 - w) * features[..., i0, :] + w * features[..., i1, :]


def frame_windows(features: np.ndarray | jax.Array, half_width: int):
    """(N, D) per-frame features -> (N, 2 * half_width + 1, D) windows centred on each frame,
    the first/last frame repeated past the ends (the A_w input of the audio projector)."""
    xp = jnp if isinstance(features, jax.Array) else np
    n = features.shape[0]
    idx = xp.clip(xp.arange(n)[:, None] + xp.arange(-half_width, half_width + 1)[None, :], 0, n - 1)
    return features[idx]


# ---------------------------------------------------------------------------- encoding


@nnx.jit(static_argnames=("layers", "weights"))
def _encode(model: Wav2Vec2Model, x, stats, layers, weights):
    return select_layers(model(x, feature_norm_stats=stats), layers, weights)


@nnx.jit
def _first_conv_moments(model: Wav2Vec2Model, x, valid_rows):
    y = model.feature_extractor.first_conv(x)[0]  # (S0, C)
    mask = (jnp.arange(y.shape[0]) < valid_rows)[:, None]
    n = jnp.maximum(valid_rows, 1).astype(jnp.float32)
    mean = jnp.sum(jnp.where(mask, y, 0), axis=0) / n
    m2 = jnp.sum(jnp.where(mask, (y - mean) ** 2, 0), axis=0)
    return mean, m2


def _group_norm_stats(model: Wav2Vec2Model, wave: np.ndarray, rows_per_chunk: int):
    """Per-channel (mean, var) of the first conv layer over the whole waveform, in chunks
    (Chan's parallel combination in float64), so chunked encoding normalises like one pass."""
    k, s = model.config["conv_kernel"][0], model.config["conv_stride"][0]
    rows = (len(wave) - k) // s + 1
    span = s * (rows_per_chunk - 1) + k
    count, mean, m2 = 0, 0.0, 0.0
    for r0 in range(0, rows, rows_per_chunk):
        n = min(rows_per_chunk, rows - r0)
        piece = wave[s * r0 : s * r0 + span]
        piece = np.pad(piece, (0, span - len(piece)))
        cm, cm2 = (np.asarray(a, np.float64) for a in _first_conv_moments(model, piece[None], n))
        delta = cm - mean
        total = count + n
        mean = mean + delta * n / total
        m2 = m2 + cm2 + delta**2 * count * n / total
        count = total
    return jnp.asarray(mean, jnp.float32), jnp.asarray(m2 / count, jnp.float32)


def _check_layers(model: Wav2Vec2Model, layers):
    n = model.config["num_hidden_layers"] + 1
    for i in [layers] if isinstance(layers, int) else layers:
        if not -n <= i < n:
            raise ValueError(f"layer {i} does not exist: the encoder has hidden states 0..{n - 1}")
    return layers if isinstance(layers, int) else tuple(layers)


def encode_chunked(
    model: Wav2Vec2Model,
    wave: np.ndarray,
    *,
    layers: int | Sequence[int] = -1,
    weights: Sequence[float] | None = None,
    chunk_s: float = 30.0,
    context_s: float = 5.0,
    sr: int = SAMPLE_RATE,
) -> np.ndarray:
    """(S,) normalised waveform -> (T, D) encoder features, T = feature_lengths(S).

    Runs windows of `chunk_s` seconds of kept output plus `context_s` seconds of context each
    side (windows are shifted inward at the ends, so all have one length and compile once;
    audio shorter than one window runs in a single pass). Working memory is one window
    whatever the audio length. The first conv layer's GroupNorm (base models) uses statistics
    of the whole utterance, so the conv stack is exact; attention is global in the model, so
    frames match a single pass to the extent that attention beyond `context_s` is negligible.
    """
    layers = _check_layers(model, layers)
    weights = None if weights is None else tuple(float(w) for w in weights)
    wave = np.asarray(wave, np.float32)
    stride, field = conv_geometry(model.config)
    total = int(feature_lengths(model.config, len(wave)))
    if total < 1:
        raise AudioTooShortError(f"audio has {len(wave)} samples; the encoder needs at least {field}")
    core, ctx = max(1, round(chunk_s * sr / stride)), max(0, round(context_s * sr / stride))
    window = core + 2 * ctx
    group = model.feature_extractor.conv_layers[0].norm_kind == "group"
    if total <= window:
        return np.asarray(_encode(model, jnp.asarray(wave[None]), None, layers, weights))[0]
    stats = _group_norm_stats(model, wave, window * stride // model.config["conv_stride"][0]) if group else None
    span = stride * (window - 1) + field
    out = None
    for a in range(0, total, core):
        start = min(max(a - ctx, 0), total - window)
        piece = jnp.asarray(wave[None, stride * start : stride * start + span])
        feats = np.asarray(_encode(model, piece, stats, layers, weights))[0]
        if out is None:
            out = np.empty((total, feats.shape[-1]), np.float32)
        b = min(a + core, total)
        out[a:b] = feats[a - start : b - start]
    return out


def audio_features(
    audio: str | os.PathLike | np.ndarray,
    model: Wav2Vec2Model,
    *,
    fps: float = 25,
    sr: int = SAMPLE_RATE,
    layers: int | Sequence[int] = -1,
    weights: Sequence[float] | None = None,
    chunk_s: float = 30.0,
    context_s: float = 5.0,
) -> np.ndarray:
    """A file (or a mono waveform at `sr`) -> (N, D) features, one row per video frame.

    `layers`: one hidden-state index (0 = encoder input, -1 = last layer) or several, averaged
    with `weights` (default uniform).
    """
    wave = load_audio(audio, sr) if isinstance(audio, (str, os.PathLike)) else np.asarray(audio, np.float32)
    if wave.ndim != 1:
        raise AudioError(f"waveform has shape {wave.shape}; pass a mono (S,) array (average the channels)")
    if wave.size == 0:
        raise EmptyAudioError("the waveform has no samples; pass audio with sound in it")
    validate.check_finite_audio(wave, sr, "the waveform")
    duration = len(wave) / sr
    frames = num_video_frames(duration, fps)
    if duration < 1 / fps:
        raise AudioTooShortError(
            f"audio lasts {duration * 1000:.1f} ms, shorter than one video frame ({1000 / fps:.0f} ms at {fps} fps); "
            "pass a longer clip"
        )
    stride, field = conv_geometry(model.config)
    feats = encode_chunked(model, normalize(wave), layers=layers, weights=weights, chunk_s=chunk_s,
                           context_s=context_s, sr=sr)
    return features_to_frames(feats, frames, fps=fps, sr=sr, stride=stride, field=field)
