"""`EmotiveTalkPipeline.stream`: speech in by chunks, frames out window by window, never changed."""

from __future__ import annotations

import numpy as np
import pytest

from emotivetalk_jax.data.audio import num_video_frames


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from emotivetalk_jax.bundle import make_random_bundle
    from emotivetalk_jax.pipeline import EmotiveTalkPipeline

    b = make_random_bundle(tmp_path_factory.mktemp("bundle") / "tiny", "tiny", 0, resolution=16, window=6,
                           overlap=2, steps=2, dicte_steps=1, decode_chunk=2)
    return EmotiveTalkPipeline.from_pretrained(b, progress=False)


PORTRAIT, BOX = np.full((16, 16, 3), 120, np.uint8), (3, 3, 13, 13)


def _speech(frames: float) -> np.ndarray:
    n = int(frames * 640)
    return (0.3 * np.sin(np.arange(n) * 0.05) * np.sin(np.arange(n) * 0.0007)).astype(np.float32)


def test_stream_emits_frames_that_never_change(pipe, tmp_path, monkeypatch):
    from emotivetalk_jax import pipeline as pl

    calls, real = [], pl._dicte_chunk

    def spy(dicte, cond, num_new, key, steps, prefix):  # (prefix frames, new frames) of each Di-CTE chunk
        calls.append((0 if prefix is None else prefix.shape[1], num_new))
        return real(dicte, cond, num_new, key, steps, prefix)

    monkeypatch.setattr(pl, "_dicte_chunk", spy)
    wave = _speech(22.6)  # 23 frames: windows (0, 6) (4, 10) (8, 14) (12, 18) (16, 22), then (17, 23) at the end
    sizes = [1000, 7, 3000, 2500, 4096, 640, 1, 5000, 10**6]
    cuts = np.cumsum(sizes)
    pulled = []

    def chunks():
        for a, b in zip([0, *cuts[:-1]], cuts):
            if a < len(wave):
                pulled.append(min(b, len(wave)))
                yield wave[a:b]

    stats, out = {}, tmp_path / "s.mp4"
    gen = pipe.stream(PORTRAIT, chunks(), seed=3, crop=False, face_box=BOX, out=out, stats=stats)
    got, kept = [], []
    while True:
        try:
            px = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        if not got:  # the first window waited for its frames plus one window of look-ahead, no more
            assert 12 * 640 <= pulled[-1] < 12 * 640 + 5000
        got.append(px)
        kept.append(px.copy())
    assert [len(g) for g in got] == [6, 4, 4, 4, 4, 1]
    # Di-CTE continues each window from the last `prefix_frames` (4) frames before its new ones
    assert calls == [(0, 6), (4, 4), (4, 4), (4, 4), (4, 4), (4, 1)]
    for a, b in zip(got, kept):  # frames already emitted never change
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.concatenate(kept), result.frames)  # the final video is their sequence
    assert len(result.frames) == num_video_frames(len(wave) / 16000) == 23 and out.is_file()
    assert stats["windows"] == 6 and 0 < stats["first_frame_s"] and result.info["streamed"]
    from emotivetalk_jax.provenance.credentials import read_credential
    from emotivetalk_jax.provenance.label import read_label

    assert read_label(out)["ai_generated"] == "true" and read_credential(out)["status"] == "self-signed"  # issue 35

    one = list(pipe.stream(PORTRAIT, [wave[:4 * 640]], crop=False, face_box=BOX))  # shorter than a window: one exact window
    assert [len(g) for g in one] == [4]


@pytest.mark.parametrize("case", ["no chunks", "nan", "two rates"])
def test_stream_bad_input_one_clear_error_nothing_written(pipe, tmp_path, case):
    from emotivetalk_jax.data.audio import AudioError

    w = _speech(12)
    chunks, match = {"no chunks": ([], "no chunks"),
                     "nan": ([w, np.r_[w[:100], np.nan]], "chunk 1"),
                     "two rates": ([(w, 16000), (w, 8000)], "one sample rate")}[case]
    out = tmp_path / "x.mp4"
    with pytest.raises(AudioError, match=match) as err:
        list(pipe.stream(PORTRAIT, chunks, crop=False, face_box=BOX, out=out))
    assert "\n" not in str(err.value) and len(str(err.value)) < 300
    assert not out.exists() and not list(tmp_path.iterdir())


def test_batched_vae_decode_gives_the_same_frames(pipe):
    """`decode_batch` decodes several chunks per call (vmapped): the frames of one chunk per call."""
    import dataclasses

    import jax

    h = pipe.latent_size
    z = jax.random.normal(jax.random.key(0), (1, 7, h, h, 4))  # 7 frames in chunks of 2: the last shifted back
    one = pipe.decode(z)
    settings = pipe.settings
    try:
        pipe.settings = dataclasses.replace(settings, decode_batch=3)
        three = pipe.decode(z)
    finally:
        pipe.settings = settings
    assert one.shape == (7, 16, 16, 3)
    assert np.abs(one.astype(int) - three.astype(int)).max() <= 1
