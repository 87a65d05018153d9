"""`emotivetalk detect VIDEO...`: which of the three marks a video carries.

One JSON object per video, one per line:

    {"video": "talk.mp4", "marked": true,
     "label": {"ai_generated": "true", "generator": "emotivetalk_jax 0.1.0", ...} | null,
     "credential": {"status": "self-signed", "generated": true, ...},   # signed | self-signed | tampered | absent
     "watermark": {"detected": true, "score": 23.1, "p_value": 1e-110, ...}}

`marked`: the label says AI-generated, or a C2PA manifest (valid or tampered) declares trained
algorithmic media, or the watermark is found (p < `watermark.THRESHOLD_P`). Exit status: 0 when
every video is marked, 1 when one is not, 2 on bad input (a missing or unreadable file: one
line, nothing else printed).
"""

from __future__ import annotations

import json
import os

from emotivetalk_jax import validate
from emotivetalk_jax.provenance import watermark
from emotivetalk_jax.provenance.credentials import read_credential
from emotivetalk_jax.provenance.label import read_label


MAX_FRAMES = 1500  # the first minute at 25 fps: far more than the test needs, and bounded memory


def detect_file(path: str | os.PathLike, info=None) -> watermark.Detection:
    """The watermark test on the file's frames (the first `MAX_FRAMES`), read at `watermark.WORK`
    px a side and the file's own frame rate."""
    from emotivetalk_jax.data.video import probe, read_frames

    info = info or probe(path)
    frames = read_frames(path, fps=info.fps or 25.0, size=watermark.WORK, max_frames=MAX_FRAMES, info=info)
    return watermark.detect_frames(frames)


def inspect(path: str | os.PathLike, info=None) -> dict:
    """The report of one video (see the module docstring)."""
    lab = read_label(path)
    cred = read_credential(path)
    wm = detect_file(path, info)
    marked = (lab is not None or (cred["status"] != "absent" and cred.get("generated", False)) or wm.detected)
    return {"video": str(path), "marked": bool(marked), "label": lab, "credential": cred, "watermark": wm.to_json()}


def add_detect_arguments(p) -> None:
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files to test")


def detect_main(args) -> tuple[str, int]:
    """(the JSON lines to print, the exit status). Every file is checked before any is tested."""
    from emotivetalk_jax.data.video import VideoError, probe

    infos = []
    for v in args.videos:
        validate.check_file(v, "video", error=VideoError)
        infos.append(probe(v))
    reports = [inspect(v, info) for v, info in zip(args.videos, infos)]
    text = "\n".join(json.dumps(r) for r in reports)
    return text, 0 if all(r["marked"] for r in reports) else 1


__all__ = ["add_detect_arguments", "detect_file", "detect_main", "inspect"]
