"""The label: container metadata in the mp4 saying the video is AI-generated, by what, from what.

Written by `data.video.write_mp4(metadata=...)` as mp4 metadata keys (ffmpeg's
`use_metadata_tags`: players list them, `ffprobe` prints them); read back with ffmpeg's
ffmetadata export. Keys (all strings):

    ai_generated          "true"
    digital_source_type   the IPTC term for trained algorithmic media (what C2PA uses too)
    generator             "emotivetalk_jax 0.1.0"
    checkpoint_sha256     sha256 of the checkpoint's manifest.json ("unknown" for one never saved)
    created               UTC time, ISO 8601
    watermark             the pixel watermark's name (`watermark.KEY`), so a reader knows what to test
    comment               the same in one sentence, for tools that show only the standard tags

Anyone can strip or forge these (`ffmpeg -map_metadata -1`); the credential (`credentials`)
is what makes them checkable.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import subprocess
from pathlib import Path

from emotivetalk_jax import __version__
from emotivetalk_jax.provenance import watermark

TOOL = "emotivetalk_jax"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
KEYS = ("ai_generated", "digital_source_type", "generator", "checkpoint_sha256", "created", "watermark")


def checkpoint_hash(folder: str | os.PathLike | None) -> str | None:
    """sha256 of a checkpoint folder's manifest.json (it lists every file's sha256, so it names
    the whole checkpoint), or None for one without (never saved, or written before manifests)."""
    if folder is None or not (Path(folder) / "manifest.json").is_file():
        return None
    return hashlib.sha256((Path(folder) / "manifest.json").read_bytes()).hexdigest()


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def make_label(checkpoint_sha256: str | None, created: str | None = None) -> dict[str, str]:
    """The metadata of one generated video."""
    ckpt = checkpoint_sha256 or "unknown"
    return {"ai_generated": "true", "digital_source_type": TRAINED_ALGORITHMIC_MEDIA,
            "generator": f"{TOOL} {__version__}", "checkpoint_sha256": ckpt, "created": created or now(),
            "watermark": watermark.KEY.decode(),
            "comment": f"AI-generated video (trained algorithmic media) made by {TOOL} {__version__} from the "
                       f"checkpoint whose manifest has sha256 {ckpt}"}


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The container's global metadata tags (empty if it has none or ffmpeg cannot read it)."""
    from emotivetalk_jax.data.video import ffmpeg_exe

    r = subprocess.run([ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(path), "-f", "ffmetadata", "-"],
                       capture_output=True)
    if r.returncode != 0:
        return {}
    return _parse_ffmetadata(r.stdout.decode("utf-8", errors="replace"))


def _parse_ffmetadata(text: str) -> dict[str, str]:
    """ffmetadata's global section: `key=value` lines, '=', ';', '#', '\\' and newlines escaped
    with a backslash; stops at the first [SECTION]."""
    out: dict[str, str] = {}
    lines = text.split("\n")
    i = 1 if lines and lines[0].startswith(";FFMETADATA") else 0
    entry = ""
    while i < len(lines):
        line = lines[i]
        i += 1
        if not entry and (line.startswith("[") or line.startswith(";") or line.startswith("#")):
            if line.startswith("["):
                break
            continue
        entry += line
        if _ends_escaped(entry):  # an escaped newline: the value goes on
            entry = entry[:-1] + "\n"
            continue
        key, value, eq = [], [], False
        j = 0
        while j < len(entry):
            c = entry[j]
            if c == "\\" and j + 1 < len(entry):
                j += 1
                c = entry[j]
                (value if eq else key).append(c)
            elif c == "=" and not eq:
                eq = True
            else:
                (value if eq else key).append(c)
            j += 1
        if eq:
            out["".join(key)] = "".join(value)
        entry = ""
    return out


def _ends_escaped(s: str) -> bool:
    n = len(s) - len(s.rstrip("\\"))
    return n % 2 == 1


def read_label(path: str | os.PathLike) -> dict | None:
    """Our label's keys from the file, or None when it carries no AI-generated label."""
    meta = read_metadata(path)
    if meta.get("ai_generated", "").lower() != "true":
        return None
    return {k: meta[k] for k in KEYS if k in meta}


__all__ = ["KEYS", "TOOL", "TRAINED_ALGORITHMIC_MEDIA", "checkpoint_hash", "make_label", "now", "read_label",
           "read_metadata"]
