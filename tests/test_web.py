"""`emotivetalk serve` (web.py): the Gradio app over HTTP with gradio_client, and its refusals.

The same app in a real browser is tests/test_web_browser.py (on one worker the two share the app
and its compiled model: tests/conftest.py)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from emotivetalk_jax import cli
from emotivetalk_jax.web import Request, WebApp

ASSETS = Path(__file__).parents[1] / "emotivetalk_jax" / "assets"
PORTRAIT, SPEECH = ASSETS / "demo_portrait.png", ASSETS / "demo_speech.wav"


@pytest.fixture
def bundle(web_bundle) -> Path:
    return web_bundle  # tests/conftest.py: one per worker, shared with tests/test_web_browser.py


@pytest.fixture
def app(web_app) -> WebApp:
    return web_app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _probe(path) -> tuple[bool, bool, np.ndarray]:
    """(H.264, AAC, decoded frames) of an mp4, from the bundled ffmpeg."""
    import imageio_ffmpeg

    err = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True,
                         text=True).stderr
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    frames = np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader])
    return "Video: h264" in err, "Audio: aac" in err, frames


def test_api_two_requests_at_once_match_generate(app, bundle, tmp_path, monkeypatch):
    """gradio_client against the served app: two requests sent at once run one after the other
    and both give correct videos; the one with seed 3 has the frames `emotivetalk generate` makes;
    a text file as the portrait is one readable line; an upload over the limit is refused; no
    request folder is left."""
    import gradio_client
    from emotivetalk_jax.pipeline import EmotiveTalkPipeline

    out = tmp_path / "cli.mp4"  # first: it sets up the compile cache, which the requests then share
    rc = cli.main(["generate", "--portrait", str(PORTRAIT), "--audio", str(SPEECH), "--emotion", "happy",
                   "--checkpoint", str(bundle), "--seed", "3", "--out", str(out), "--quiet"])
    assert rc == 0 and out.is_file()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    spans, call = [], EmotiveTalkPipeline.__call__

    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return call(self, *args, **kwargs)
        finally:
            spans.append((t0, time.perf_counter()))

    monkeypatch.setattr(EmotiveTalkPipeline, "__call__", timed)
    port = _free_port()
    demo = app.blocks()
    demo.launch(server_port=port, prevent_thread_lock=True, quiet=True, **app.launch_options())
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        args = dict(portrait=gradio_client.handle_file(str(PORTRAIT)), speech=gradio_client.handle_file(str(SPEECH)),
                    emotion_text="happy", api_name="/generate")
        jobs = [client.submit(seed=3, **args), client.submit(seed=4, **args)]
        (v3, summary, details), (v4, _, details4) = (j.result(timeout=300) for j in jobs)
        notes = tmp_path / "notes.txt"
        notes.write_text("not a photo")
        with pytest.raises(gradio_client.exceptions.AppError) as err:
            client.predict(portrait=gradio_client.handle_file(str(notes)), speech=gradio_client.handle_file(str(SPEECH)),
                           api_name="/generate")
        big = tmp_path / "big.png"
        big.write_bytes(PORTRAIT.read_bytes() + bytes(1_500_000))
        with pytest.raises(Exception, match="(?i)size|large|exceed"):
            client.predict(portrait=gradio_client.handle_file(str(big)), speech=gradio_client.handle_file(str(SPEECH)),
                           api_name="/generate")
    finally:
        demo.close()
    msg = str(err.value)
    assert "notes.txt" in msg and "image" in msg and "\n" not in msg and "/" not in msg.split("notes.txt")[0], msg
    assert len(spans) == 3 and spans[0][1] <= spans[1][0]  # one at a time (the third: the text file)
    assert details["emotion"] == "happy" and details["frames"] == 100 and details["seed"] == 3 and details4["seed"] == 4
    assert set(details["seconds"]) >= {"portrait", "audio", "expression", "denoise", "decode", "write"}
    assert "100 frames" in summary and "happy" in summary
    h264, aac, frames = _probe(v3)
    assert h264 and aac and frames.shape == (100, 16, 16, 3)
    from emotivetalk_jax.provenance.credentials import read_credential
    from emotivetalk_jax.provenance.label import read_label

    # issue 35: what the page serves says it was generated, like `generate`'s output
    assert details["marks"] == {"label": True, "credential": "self-signed", "watermark": True}
    assert read_label(v3)["ai_generated"] == "true" and read_credential(v3)["status"] == "self-signed"
    assert not np.array_equal(frames, _probe(v4)[2])  # another seed, another video

    np.testing.assert_array_equal(_probe(out)[2], frames)
    assert not list(app.root.iterdir())  # every request's folder went, the failed one's too


def _long_wav(path: Path) -> Path:
    soundfile.write(str(path), np.zeros(1000 * 601, np.int16), 1000, subtype="PCM_U8")  # 601 s in 0.6 MB
    return path


def _big(path: Path) -> str:
    path.write_bytes(bytes(1_100_000))
    return str(path)


@pytest.mark.parametrize("case", ["text file", "no speech", "long speech", "long emotion clip", "over the limit",
                                  "unknown word", "no emotion image", "bad seed", "bad face box", "bad strength"])
def test_bad_input_is_one_line_and_leaves_nothing(app, tmp_path, case):
    """Each refusal comes before any model runs (no compile here), as one line without the
    server's folders; the request's folder is gone."""
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    p, sp, long = str(PORTRAIT), str(SPEECH), lambda name: str(_long_wav(tmp_path / name))
    r = {"text file": lambda: Request(str(notes), sp),
         "no speech": lambda: Request(p, None),
         "long speech": lambda: Request(p, long("long.wav")),
         "long emotion clip": lambda: Request(p, sp, "speech clip", emotion_speech=long("clip.wav")),
         "over the limit": lambda: Request(p, sp, "video", emotion_video=_big(tmp_path / "v.mp4")),
         "unknown word": lambda: Request(p, sp, emotion_text="blorple"),
         "no emotion image": lambda: Request(p, sp, "image"),
         "bad seed": lambda: Request(p, sp, seed=-1),
         "bad face box": lambda: Request(p, sp, face_box="1,2,3"),
         "bad strength": lambda: Request(p, sp, expression_strength=float("nan"))}[case]()
    match = {"text file": "notes.txt as an image", "no speech": "no speech", "long speech": "601.0 s, over the 600 s",
             "long emotion clip": "emotion speech clip clip.wav lasts", "over the limit": "over the 1 MB upload limit",
             "unknown word": "blorple", "no emotion image": "emotion from image: upload one", "bad seed": "seed",
             "bad face box": "face box", "bad strength": "expression strength"}[case]
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as err:  # validate's typed errors, the portrait's and the emotion's
        app.generate(r)
    from emotivetalk_jax.web import one_line

    line = one_line(err.value)
    assert match in line and "\n" not in line and len(line) <= 300 and str(tmp_path) not in line, line
    assert str(app.root) not in line and time.perf_counter() - t0 < 5
    assert not list(app.root.iterdir())
