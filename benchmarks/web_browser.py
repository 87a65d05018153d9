"""The web demo in a real browser: Debian's chromium, headless, driven by playwright.

    pip install -e ".[web,browser]" && apt-get install -y chromium
    python benchmarks/web_browser.py [--checkpoint DIR] [--shot benchmarks/web_demo.png]

Serves `emotivetalk serve`'s app (the shipped demo checkpoint by default), opens the page,
uploads the shipped portrait and speech, types "happy", clicks Generate, waits for the video,
downloads it and checks an H.264 + AAC mp4 of 100 frames; saves a screenshot and checks it is
neither blank nor an error page; then a text file as the portrait must show the error in the
page and leave no request folder. Prints one JSON line of what it saw. Not in the test suite:
CI has no browser, and the generation it waits on costs a compile (tests/test_web.py covers the
same app over HTTP)."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
ASSETS = Path(__file__).resolve().parents[1] / "emotivetalk_jax" / "assets"


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--shot", default=str(Path(__file__).parent / "web_demo.png"))
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--timeout-s", type=float, default=600)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="web-browser-"))
    os.environ["GRADIO_TEMP_DIR"] = str(tmp / "gradio")
    from playwright.sync_api import sync_playwright

    from emotivetalk_jax.accelerators import setup_compilation_cache
    from emotivetalk_jax.pipeline import EmotiveTalkPipeline, default_checkpoint
    from emotivetalk_jax.web import WebApp
    from PIL import Image
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_web import _probe

    setup_compilation_cache()
    app = WebApp(EmotiveTalkPipeline.from_pretrained(a.checkpoint or default_checkpoint()), temp_root=tmp)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = app.blocks()
    demo.launch(server_port=port, prevent_thread_lock=True, quiet=True, **app.launch_options())
    seen = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=a.chromium, args=["--no-sandbox"])
            page = browser.new_page(accept_downloads=True, viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#generate")
            page.locator("#portrait input[type=file]").set_input_files(str(ASSETS / "demo_portrait.png"))
            page.locator("#speech input[type=file]").set_input_files(str(ASSETS / "demo_speech.wav"))
            box = page.locator("#emotion_text input")
            box.fill("happy")
            box.press("Enter")
            page.wait_for_timeout(500)
            t0 = time.perf_counter()
            page.click("#generate")
            stages = set()
            while not page.locator("#video video[src]").count():
                text = page.locator("#video").inner_text()
                stages.update(w for w in ("portrait", "audio", "lip", "expression", "denoise", "decode", "write")
                              if w in text)
                if time.perf_counter() - t0 > a.timeout_s:
                    raise TimeoutError("no video in the page")
                page.wait_for_timeout(250)
            seen["generate_s"] = round(time.perf_counter() - t0, 1)
            seen["stages_shown"] = sorted(stages)
            page.wait_for_timeout(1000)
            src = page.locator("#video video").get_attribute("src")
            got = tmp / "downloaded.mp4"
            got.write_bytes(page.request.get(src).body())
            h264, aac, frames = _probe(got)
            seen.update(h264=h264, aac=aac, frames=len(frames), summary=page.locator("#summary").inner_text()[:200])
            page.screenshot(path=a.shot, full_page=True)
            px = np.asarray(Image.open(a.shot).convert("L"), np.float32)
            body = page.locator("body").inner_text()
            seen.update(shot=a.shot, shot_std=round(float(px.std()), 1),
                        shot_ok=bool(px.std() > 10 and "Error" not in body and "happy" in body))
            # a text file as the portrait: the message in the page, no request folder left
            notes = tmp / "notes.txt"
            notes.write_text("not a photo")
            page.goto(f"http://127.0.0.1:{port}/")  # a fresh page
            page.wait_for_selector("#generate")
            page.locator("#portrait input[type=file]").set_input_files(str(notes))
            page.locator("#speech input[type=file]").set_input_files(str(ASSETS / "demo_speech.wav"))
            page.wait_for_timeout(500)
            page.click("#generate")
            # the browser's image box may drop a file it cannot draw: then "no portrait" is the line
            shown = page.locator("text=/as an image|no portrait/").first
            shown.wait_for(timeout=60_000)
            toast = shown.inner_text()
            seen.update(error_shown=toast[:200], folders_left=len(list(app.root.iterdir())))
            browser.close()
    finally:
        demo.close()
        app.close()
    ok = (seen["h264"] and seen["aac"] and seen["frames"] == 100 and seen["shot_ok"] and seen["folders_left"] == 0
          and ("notes.txt" in seen["error_shown"] or "no portrait" in seen["error_shown"]))
    seen["ok"] = bool(ok)
    return seen


if __name__ == "__main__":
    r = main()
    print(json.dumps(r))
    sys.exit(0 if r["ok"] else 1)
