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


def test_stream_gives_a_portrait_reading_fast_decoder_its_portrait(pipe, monkeypatch):
    """The stream hands the fast decoder the portrait (`decode_reference`, once per stream): an
    untrained portrait-reading decoder draws exactly the portrait on every emitted frame."""
    from flax import nnx

    from emotivetalk_jax.models.fast_decoder import FastDecoder, FastDecoderConfig

    levels = len(pipe.bundle.vae.config["block_out_channels"])
    decoder = FastDecoder(FastDecoderConfig(widths=(4,) * levels, reference=True), rngs=nnx.Rngs(0))
    monkeypatch.setattr(pipe.bundle, "fast_decoder", decoder)
    pipe.fast_decode = True
    try:
        frames = np.concatenate(list(pipe.stream(PORTRAIT, [_speech(10)], crop=False, face_box=BOX, mark=False)))
    finally:
        pipe.fast_decode = False
    portrait = pipe.prepare_portrait(PORTRAIT, face_box=BOX, crop=False).image
    assert len(frames) == 10 and (frames == portrait[None]).all()


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


def test_stream_takes_the_motion_level_and_a_driving_pose_per_window(pipe, tmp_path, monkeypatch):
    """The motion level reaches every window's conditions; a driving pose reaches each window as
    the offline run's frames of it (played forward and back past its end, with one warning); a
    bundle without the knob or the pose guider refuses them in one line, nothing written."""
    import dataclasses

    from emotivetalk_jax.data.pose import PoseError, fit_length
    from emotivetalk_jax.pipeline import EmotiveTalkPipeline
    from emotivetalk_jax.validate import InputWarning

    wave, out = _speech(22.6), tmp_path / "m.mp4"
    for kw, match in (({"motion": 1.0}, "without the motion knob"), ({"pose": np.ones((3, 4))}, "no pose condition")):
        with pytest.raises(PoseError, match=match):
            next(pipe.stream(PORTRAIT, [wave], crop=False, face_box=BOX, out=out, **kw))
        assert not out.exists()

    # a bundle with the knob and the guider, faked: the conditions each window gets are recorded
    # (the tiny backbone itself has no guider, so the pose stops there)
    seen, real = [], pipe.conditions

    def spy(*args, motion=None, pose=None):
        seen.append((motion, pose))
        return real(*args, motion=motion)

    monkeypatch.setattr(pipe, "conditions", spy)
    monkeypatch.setattr(pipe, "settings", dataclasses.replace(pipe.settings, motion_conditioning=True,
                                                              motion_typical=0.3))
    monkeypatch.setattr(EmotiveTalkPipeline, "has_pose_condition", property(lambda self: True))
    pose = np.random.default_rng(0).normal(0, 0.01, (9, 4)).astype(np.float32)
    pose[:, 3] = 1.0
    with pytest.warns(InputWarning, match="the driving pose has 9 frames"):
        frames = list(pipe.stream(PORTRAIT, [wave[:7000], wave[7000:]], crop=False, face_box=BOX, motion=0.5,
                                  pose=pose))
    assert sum(len(f) for f in frames) == 23
    windows = [(0, 6), (4, 10), (8, 14), (12, 18), (16, 22), (17, 23)]
    assert [m for m, _ in seen] == [0.5] * len(windows)
    played = fit_length(pose, 23)  # what the offline call gives the whole video
    for (a, b), (_, got) in zip(windows, seen):
        np.testing.assert_array_equal(got, played[a:b])
