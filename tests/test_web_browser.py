"""`emotivetalk serve` in a real browser: Debian's chromium, headless, driven by playwright.

The page is served by the same app as tests/test_web.py's (tests/conftest.py: a tiny random
bundle, 16 px, one step; on the worker that ran its API test, the model is already compiled).
It must offer each input's sources (webcam for the portrait and the emotion image / video, microphone for the
speech and the emotion clip) and show each emotion source's control when picked; the shipped
portrait and speech with "happy" typed in give, after Generate, a video that the page's
download button saves as an H.264 + AAC mp4 of 100 frames, the progress shown by stage on the
way; the screenshot then is neither blank nor an error page; the same portrait as the emotion
image generates too. A text file as the portrait is refused in one line in the page: by the
browser's image box at upload (".txt"), or by `validate` (the same text named ".png"), leaving
no request folder behind.

Chromium missing is a failure, not a skip: `.ci/run` installs it (apt) before the tests.
EMOTIVETALK_WEB_CHECKPOINT=DIR serves that checkpoint instead (the README's screenshot is the
shipped demo's: EMOTIVETALK_WEB_CHECKPOINT=emotivetalk_jax/assets/demo
EMOTIVETALK_WEB_SHOT=benchmarks/web_demo.png python -m pytest -n 0 tests/test_web_browser.py);
EMOTIVETALK_WEB_SHOT=PATH keeps the screenshot there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_web import PORTRAIT, SPEECH, _free_port, _probe

STAGES = ("portrait", "audio", "lip", "expression", "denoise", "decode", "write")
TIMEOUT_MS = 600_000  # a cold compile on a loaded 2-core machine; the tiny bundle takes seconds

# Every text the video box shows while a request runs (queue place, progress by stage), kept by
# the page itself: polling from here could miss a stage that comes and goes within a poll.
_WATCH = """() => { window.__seen = [];
  const box = document.querySelector('#video');
  new MutationObserver(() => window.__seen.push(box.innerText)).observe(
    box, {subtree: true, childList: true, characterData: true}); }"""


def _chromium() -> str:
    path = os.environ.get("EMOTIVETALK_CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.fail("Debian's chromium is not installed (apt-get install -y chromium; .ci/run installs it): "
                    "the web demo's browser test needs it")
    return path


def _sources(page, elem: str) -> list[str]:
    """The source buttons an input offers (Gradio labels them: Upload file, Capture from camera, ...)."""
    return page.locator(f"#{elem} [data-testid=source-select] button").evaluate_all(
        "bs => bs.map(b => b.getAttribute('aria-label'))")


def _error_line(page, timeout_ms: float = 60_000) -> str:
    """The message of the error toast the page shows (then closed, so the next one is new)."""
    msg = page.get_by_test_id("toast-text").last
    msg.wait_for(timeout=timeout_ms)
    text = msg.inner_text().strip()
    page.get_by_test_id("toast-close").first.click()
    page.get_by_test_id("toast-text").first.wait_for(state="detached", timeout=10_000)
    return text


def _generate(page, summary_has: str) -> tuple[str, list[str]]:
    """Click Generate and wait for the summary naming `summary_has` -> (the summary, every text the
    video box showed on the way)."""
    page.evaluate(_WATCH)
    page.click("#generate")
    page.locator("#summary").get_by_text(summary_has).wait_for(timeout=TIMEOUT_MS)
    page.locator("#video video[src]").wait_for(timeout=30_000)
    return page.locator("#summary").inner_text(), page.evaluate("window.__seen")


def test_page_in_a_real_browser(request, tmp_path, monkeypatch):
    chromium = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e \".[test]\" pins it")
    from emotivetalk_jax.accelerators import setup_compilation_cache
    from emotivetalk_jax.pipeline import EmotiveTalkPipeline
    from emotivetalk_jax.web import WebApp

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    setup_compilation_cache()  # as `emotivetalk serve` (the suite's own fresh folder)
    ckpt = os.environ.get("EMOTIVETALK_WEB_CHECKPOINT")
    app = WebApp(EmotiveTalkPipeline.from_pretrained(ckpt), temp_root=tmp_path) if ckpt else \
        request.getfixturevalue("web_app")
    monkeypatch.setattr(app.pipe, "progress", True)  # the bars the page's progress follows
    done = app.requests
    shot = Path(os.environ.get("EMOTIVETALK_WEB_SHOT") or tmp_path / "page.png")
    port = _free_port()
    demo = app.blocks()
    demo.launch(server_port=port, prevent_thread_lock=True, quiet=True, **app.launch_options())
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(accept_downloads=True, viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#generate")

            # every input's sources, and each emotion source's control when it is picked
            assert _sources(page, "portrait") == ["Upload file", "Capture from camera"]
            assert _sources(page, "speech") == ["Upload file", "Record audio"]
            radio = page.locator("#emotion_from input[type=radio]")
            assert radio.evaluate_all("rs => rs.map(r => r.value)") == ["text", "image", "video", "speech clip",
                                                                        "none"]
            controls = {"text": "emotion_text", "image": "emotion_image", "video": "emotion_video",
                        "speech clip": "emotion_speech"}
            offered = {"image": ["Upload file", "Capture from camera"],
                       "video": ["Upload file", "Capture from camera"],
                       "speech clip": ["Upload file", "Record audio"]}
            for kind in ("image", "video", "speech clip", "none", "text"):
                page.locator(f"#emotion_from input[value='{kind}']").check()
                for k, elem in controls.items():
                    page.locator(f"#{elem}").wait_for(state="visible" if k == kind else "hidden", timeout=10_000)
                if kind in offered:
                    assert _sources(page, controls[kind]) == offered[kind], kind

            # the shipped portrait and speech, "happy" typed in
            page.locator("#portrait input[type=file]").set_input_files(str(PORTRAIT))
            page.locator("#speech input[type=file]").set_input_files(str(SPEECH))
            box = page.locator("#emotion_text input")
            box.fill("happy")
            box.press("Enter")
            page.locator("#speech audio, #speech [data-testid=waveform-Speech]").first.wait_for(
                state="attached", timeout=30_000)
            summary, seen = _generate(page, "from text 'happy'")
            assert "100 frames" in summary and "emotion happy" in summary, summary
            shown = {s for s in STAGES if any(s in t for t in seen)}
            assert len(shown) >= 3, seen  # the progress by stage (a warm cache may outrun a few)

            with page.expect_download(timeout=60_000) as dl:
                page.locator("#video").get_by_role("link", name="Download").or_(
                    page.locator("#video").get_by_role("button", name="Download")).first.click()
            got = tmp_path / "downloaded.mp4"
            dl.value.save_as(got)
            h264, aac, frames = _probe(got)
            assert h264 and aac and len(frames) == 100

            page.screenshot(path=str(shot), full_page=True)
            gray = np.asarray(Image.open(shot).convert("L"), np.float32)
            body = page.locator("body").inner_text()
            assert gray.std() > 10 and gray.shape[0] >= 1000, gray.std()  # not blank
            assert page.title() == "EmotiveTalk" and "Error" not in body and summary in body
            assert not page.get_by_test_id("toast-body").count()

            # another emotion source through the page: the portrait as the emotion image
            page.locator("#emotion_from input[value='image']").check()
            page.locator("#emotion_image input[type=file]").set_input_files(str(PORTRAIT))
            page.locator("#emotion_image img").wait_for(timeout=30_000)
            summary, _ = _generate(page, f"from image {PORTRAIT.name}")
            assert "100 frames" in summary, summary

            # a text file as the portrait: the image box refuses a .txt at upload ...
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#generate")
            notes = tmp_path / "notes.txt"
            notes.write_text("not a photo")
            page.locator("#portrait input[type=file]").set_input_files(str(notes))
            line = _error_line(page)
            assert "notes.txt" in line and "\n" not in line, line
            page.locator("#speech input[type=file]").set_input_files(str(SPEECH))
            page.click("#generate")
            line = _error_line(page)
            assert line.startswith("no portrait") and "\n" not in line, line
            # ... and `validate` the same text named .png, in one line without the server's folders
            fake = tmp_path / "photo.png"
            fake.write_text("not a photo")
            page.locator("#portrait input[type=file]").set_input_files(str(fake))
            page.wait_for_timeout(500)
            page.click("#generate")
            line = _error_line(page)
            assert "photo.png" in line and "image" in line and "\n" not in line and str(tmp_path) not in line, line
            assert not list(app.root.iterdir())  # every request's folder went, the refused ones' too
            browser.close()
    finally:
        demo.close()
        if ckpt:
            app.close()
    assert app.requests == done + 2
