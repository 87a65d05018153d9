"""Audio front end: decoding, normalisation, feature-to-video-frame alignment, windows, chunking, errors."""

from __future__ import annotations

import subprocess

import imageio_ffmpeg
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
from flax import nnx

from emotivetalk_jax.data.audio import (
    AudioDecodeError, AudioError, AudioNotFoundError, AudioTooShortError, EmptyAudioError, audio_features,
    encode_chunked, features_to_frames, frame_windows, load_audio, normalize, num_video_frames,
)
from emotivetalk_jax.models.wav2vec2 import Wav2Vec2Model, conv_geometry
from emotivetalk_jax.models.wavlm import WavLMModel, relative_position_buckets

SR = 16000
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
            conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2), num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2)
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def _tiny(cls=Wav2Vec2Model, seed=0, **overrides):
    """A tiny encoder with random weights, filled from numpy (eager NNX init is slow on CPU)."""
    abstract = nnx.eval_shape(lambda: cls.from_hf_config({**TINY, **overrides}, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)
    state = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), jnp.float32), state)
    return nnx.merge(graphdef, state)


def _ffmpeg(*args):
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-y", *map(str, args)], check=True)


# ------------------------------------------------------------------ timing and alignment


def test_num_video_frames_rounds_half_up():
    assert num_video_frames(2.0) == 50
    assert num_video_frames(0.02) == 1  # exactly half a frame rounds up
    assert num_video_frames(0.0199) == 0
    assert num_video_frames(10.0, fps=30) == 300


def test_standard_geometry_and_frame_positions():
    stride, field = conv_geometry(Wav2Vec2Model.defaults)
    assert (stride, field) == (320, 400)
    feats = np.arange(10, dtype=np.float32)[:, None]  # feature t holds the value t
    frames = features_to_frames(feats, 4, stride=stride, field=field)
    np.testing.assert_allclose(frames[:, 0], [0.375, 2.375, 4.375, 6.375])  # p_j = 2 j + 0.375


def _energy_features(wave, stride=320, field=400):
    """An encoder-free stand-in with the wav2vec2 geometry: feature t = energy of samples [s t, s t + r)."""
    n = (len(wave) - field) // stride + 1
    return np.array([[np.sum(wave[stride * t : stride * t + field] ** 2)] for t in range(n)], np.float32)


@pytest.mark.parametrize("fps", [25, 30])
def test_clicks_peak_in_their_own_frame(fps):
    duration = 3.0
    frames = num_video_frames(duration, fps)
    # Clicks at the start, middle and end of frames, away from each other by > 2 frames.
    click_frames = [4, 11, 20, 33, 47, 60]
    # At 25 fps the 20 ms hop tiles each 40 ms frame exactly, so a click anywhere in a frame
    # (even 1 ms from its edges) lands in it. At other rates the 25 ms receptive field blurs
    # clicks within a few ms of a frame boundary, so those are tested away from the edges.
    offsets = [0.02, 0.5, 0.98, 0.05, 0.7, 0.95] if fps == 25 else [0.2, 0.5, 0.8, 0.3, 0.7, 0.25]
    wave = np.zeros(int(duration * SR), np.float32)
    for j, off in zip(click_frames, offsets):
        wave[int((j + off) / fps * SR)] = 1.0
    per_frame = features_to_frames(_energy_features(wave), frames, fps=fps)
    windows = frame_windows(per_frame, half_width=2)
    assert windows.shape == (frames, 5, 1)
    for j in click_frames:
        assert int(np.argmax(windows[j, :, 0])) == 2, (j, windows[j, :, 0])  # the centre = the click's frame
        assert per_frame[j, 0] >= 0.375  # at least the 0.375 weight of one feature holding the click


def test_frame_windows_replicate_the_ends():
    feats = np.arange(4, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    w = frame_windows(feats, 2)
    np.testing.assert_array_equal(w[0, :, 0], [0, 0, 0, 1, 2])
    np.testing.assert_array_equal(w[3, :, 0], [1, 2, 3, 3, 3])
    import jax.numpy as jnp
    np.testing.assert_array_equal(np.asarray(frame_windows(jnp.asarray(feats), 2)), w)


def test_real_encoder_is_aligned_to_frames():
    """Delaying the audio by exactly one video frame delays the per-frame features by one frame."""
    model = _tiny(feat_extract_norm="layer")
    wave = normalize(np.random.default_rng(0).standard_normal(2 * SR))
    delayed = np.concatenate([np.zeros(640, np.float32), wave[:-640]])
    a, b = (features_to_frames(encode_chunked(model, w, layers=0), 50) for w in (wave, delayed))
    # Layer 0 (conv stack + positional conv) reaches 8 encoder frames = 4 video frames each side.
    np.testing.assert_allclose(b[6:-5], a[5:-6], atol=1e-4)
    assert np.abs(b[6:-5] - a[6:-5]).max() > 1e-2  # and the comparison is not trivially true


# ------------------------------------------------------------------ chunked encoding


def _local_wavlm():
    """A tiny WavLM whose relative position bias forbids attention beyond 20 frames, so that
    chunks with 2 s of context must reproduce a single pass exactly."""
    cfg = {"model_type": "wavlm", "feat_extract_norm": "group"}
    model = _tiny(WavLMModel, 1, **cfg)
    buckets = np.asarray(relative_position_buckets(41, 320, 800))[20]  # buckets of distances -20..20
    table = np.full((320, 2), -1e4, np.float32)
    table[buckets] = np.random.default_rng(0).standard_normal((41, 2))
    model.encoder.layers[0].attention.rel_attn_embed.embedding.value = table
    return model


@pytest.fixture(scope="module")
def minute_of_audio():
    rng = np.random.default_rng(0)
    t = np.arange(60 * SR) / SR
    return normalize(np.sin(2 * np.pi * 220 * t) * (1 + np.sin(t)) + 0.3 * rng.standard_normal(t.size))


@pytest.mark.parametrize("which", ["wavlm-local-attention", "wav2vec2-group-layer0"])
def test_chunked_equals_single_pass(minute_of_audio, which):
    if which == "wavlm-local-attention":
        model, layers = _local_wavlm(), -1
    else:
        model, layers = _tiny(seed=2, feat_extract_norm="group"), 0
    single = encode_chunked(model, minute_of_audio, layers=layers, chunk_s=1000)
    chunked = encode_chunked(model, minute_of_audio, layers=layers, chunk_s=10, context_s=2)
    assert chunked.shape == single.shape == (2999, 32)
    assert np.abs(chunked - single).max() < 1e-3


def test_mean_of_layers(minute_of_audio):
    model = _tiny(feat_extract_norm="layer")
    wave = minute_of_audio[: 2 * SR]
    per_layer = [np.asarray(h)[0] for h in nnx.jit(lambda m, x: m(x))(model, wave[None])]
    mixed = encode_chunked(model, wave, layers=(0, 2), weights=(1, 3))
    np.testing.assert_allclose(mixed, 0.25 * per_layer[0] + 0.75 * per_layer[2], atol=1e-5)
    np.testing.assert_allclose(encode_chunked(model, wave, layers=(0, 1, 2)), np.mean(per_layer, 0), atol=1e-5)
    with pytest.raises(ValueError, match="layer 3 does not exist"):
        encode_chunked(model, wave, layers=3)


# ------------------------------------------------------------------ decoding


def _tone(sr, seconds=1.0, channels=2, freq=440.0):
    t = np.arange(int(sr * seconds)) / sr
    return np.stack([0.5 * np.sin(2 * np.pi * freq * t)] * channels, axis=1).astype(np.float32)


def _peak_hz(wave):
    spectrum = np.abs(np.fft.rfft(wave))
    return np.argmax(spectrum) * SR / len(wave)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    sf.write(d / "tone.wav", _tone(44100), 44100)
    sf.write(d / "tone.flac", _tone(44100), 44100)
    sf.write(d / "tone.ogg", _tone(44100), 44100, format="OGG", subtype="VORBIS")
    _ffmpeg("-i", d / "tone.wav", "-c:a", "libmp3lame", "-b:a", "128k", d / "tone.mp3")
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=25", "-i", d / "tone.wav", "-t", "1", "-c:v", "libx264",
            "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", d / "clip.mp4")
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=25", "-t", "0.4", "-c:v", "libx264", "-pix_fmt", "yuv420p",
            d / "silent_video.mp4")
    return d


@pytest.mark.parametrize("name", ["tone.wav", "tone.flac", "tone.ogg", "tone.mp3", "clip.mp4"])
def test_formats_decode_to_16k_mono(media, name):
    wave = load_audio(media / name)
    assert wave.ndim == 1 and wave.dtype == np.float32
    assert abs(len(wave) / SR - 1.0) < 0.1  # mp3 / aac add encoder padding
    assert abs(_peak_hz(wave) - 440) < 3


def test_six_channels_at_48k_downmix(tmp_path):
    data = np.zeros((48000, 6), np.float32)
    data[:, 0] = _tone(48000, channels=1)[:, 0]
    sf.write(tmp_path / "six.wav", data, 48000)
    wave = load_audio(tmp_path / "six.wav")
    assert wave.shape == (SR,)
    np.testing.assert_allclose(np.abs(wave).max(), 0.5 / 6, rtol=0.02)  # the mean of the channels
    assert abs(_peak_hz(wave) - 440) < 2


def test_8k_is_upsampled(tmp_path):
    sf.write(tmp_path / "low.wav", _tone(8000, channels=1), 8000)
    wave = load_audio(tmp_path / "low.wav")
    assert wave.shape == (SR,) and abs(_peak_hz(wave) - 440) < 2


# ------------------------------------------------------------------ bad input


def test_missing_file(tmp_path):
    with pytest.raises(AudioNotFoundError, match="does not exist"):
        load_audio(tmp_path / "nope.wav")


def test_text_file_named_wav(tmp_path):
    (tmp_path / "fake.wav").write_text("this is not audio\n")
    with pytest.raises(AudioDecodeError, match="cannot decode audio from .*fake.wav"):
        load_audio(tmp_path / "fake.wav")


def test_video_without_audio(media):
    with pytest.raises(AudioDecodeError, match="no audio track"):
        load_audio(media / "silent_video.mp4")


def test_zero_length(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), SR)
    with pytest.raises(EmptyAudioError, match="no audio samples"):
        load_audio(tmp_path / "empty.wav")


def test_shorter_than_one_frame():
    model = _tiny()
    with pytest.raises(AudioTooShortError, match="shorter than one video frame"):
        audio_features(np.zeros(600, np.float32), model)  # 37.5 ms < 40 ms


def test_errors_are_value_errors_with_one_line(tmp_path):
    for exc in (AudioNotFoundError, AudioDecodeError, EmptyAudioError, AudioTooShortError):
        assert issubclass(exc, AudioError) and issubclass(exc, ValueError)
    with pytest.raises(AudioError) as err:
        load_audio(tmp_path / "missing.flac")
    assert "\n" not in str(err.value)


def test_silence_gives_finite_features():
    assert np.all(normalize(np.zeros(SR)) == 0)
    for norm in ("group", "layer"):
        model = _tiny(feat_extract_norm=norm)
        feats = audio_features(np.zeros(SR, np.float32), model)
        assert feats.shape == (25, 32) and np.all(np.isfinite(feats))
