"""Video files through the static ffmpeg bundled with imageio-ffmpeg (no system ffmpeg).

Writing: H.264 (yuv420p) with the audio muxed as AAC, to a temporary file renamed into
place, so a crash never leaves a half-written mp4. Reading: frames resampled to a fixed
fps, upright (ffmpeg applies a phone's rotation tag; `probe` reports the turned size),
optionally cropped and resized inside ffmpeg (so an HD clip never sits in memory at
full size), and audio as 16 kHz mono float32. Shapes: frames (F, H, W, 3) uint8.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


class VideoError(ValueError):
    """A video file that cannot be read; the message says why."""


class NoAudioError(VideoError):
    """The file has no audio stream."""


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """The video as displayed: a stream with a rotation tag (phones) has its sides swapped,
    as ffmpeg turns its frames upright when it decodes them (`read_frames`)."""

    width: int
    height: int
    fps: float
    duration: float
    has_audio: bool


def _quarter_turns(stream_text: str) -> int:
    """Quarter turns of a video stream's rotation tag (display matrix, or the older `rotate`
    metadata), from `ffmpeg -i`'s report of that stream."""
    m = (re.search(r"rotation of (-?\d+(?:\.\d+)?) degrees", stream_text)
         or re.search(r"^\s*rotate\s*:\s*(-?\d+(?:\.\d+)?)", stream_text, re.M))
    return round(float(m.group(1)) / 90.0) % 4 if m else 0


def probe(path: str | os.PathLike) -> VideoInfo:
    """Stream facts from `ffmpeg -i`; raises VideoError for unreadable files."""
    p = Path(path)
    if not p.is_file():
        raise VideoError(f"{p}: no such file")
    r = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(p)], capture_output=True, text=True, errors="replace")
    err = r.stderr
    m = re.search(r"Stream #.*?Video:.*?(\d{2,5})x(\d{2,5})", err)
    if not m:
        last = err.strip().splitlines()[-1] if err.strip() else "no video stream"
        raise VideoError(f"{p.name}: unreadable video ({last[:120]})")
    width, height = int(m.group(1)), int(m.group(2))
    stream = re.split(r"\n\s*Stream #", err[m.end():], maxsplit=1)[0]
    if _quarter_turns(stream) % 2:  # a phone video stored sideways: ffmpeg decodes it upright
        width, height = height, width
    fps_m = re.search(r"(\d+(?:\.\d+)?) fps", err) or re.search(r"(\d+(?:\.\d+)?) tbr", err)
    dur_m = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", err)
    dur = 0.0
    if dur_m:
        h, mi, s = dur_m.groups()
        dur = int(h) * 3600 + int(mi) * 60 + float(s)
    return VideoInfo(width, height, float(fps_m.group(1)) if fps_m else 0.0, dur,
                     bool(re.search(r"Stream #.*?Audio:", err)))


def read_frames(path: str | os.PathLike, fps: float = 25.0, crop: tuple[int, int, int, int] | None = None,
                size: int | tuple[int, int] | None = None, max_frames: int | None = None,
                start: float = 0.0, info: VideoInfo | None = None) -> np.ndarray:
    """Frames at `fps`: optional crop (x, y, w, h) then resize to `size` (square or (w, h)).
    Pass `info` from `probe` to save a second ffmpeg call."""
    info = info or probe(path)
    filters = [f"fps={fps}"]
    w, h = info.width, info.height
    if crop is not None:
        x, y, cw, ch = (int(v) for v in crop)
        filters.append(f"crop={cw}:{ch}:{x}:{y}")
        w, h = cw, ch
    if size is not None:
        w, h = (size, size) if isinstance(size, int) else size
        filters.append(f"scale={w}:{h}:flags=area")
    cmd = [ffmpeg_exe(), "-v", "error", "-nostdin"]
    if start > 0:
        cmd += ["-ss", f"{start:.3f}"]
    cmd += ["-i", str(path), "-an", "-vf", ",".join(filters)]
    if max_frames is not None:
        cmd += ["-frames:v", str(int(max_frames))]
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    r = subprocess.run(cmd, capture_output=True)
    if r.returncode != 0:
        raise VideoError(f"{Path(path).name}: ffmpeg could not decode the video ({r.stderr.decode(errors='replace').strip()[-160:]})")
    n = len(r.stdout) // (w * h * 3)
    return np.frombuffer(r.stdout[: n * w * h * 3], np.uint8).reshape(n, h, w, 3)


def read_audio(path: str | os.PathLike, sr: int = 16000, info: VideoInfo | None = None) -> np.ndarray:
    """Mono float32 audio at `sr` from any container; NoAudioError if there is none."""
    info = info or probe(path)
    if not info.has_audio:
        raise NoAudioError(f"{Path(path).name}: no audio stream")
    cmd = [ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(path), "-vn", "-ac", "1", "-ar", str(sr),
           "-f", "s16le", "-acodec", "pcm_s16le", "-"]
    r = subprocess.run(cmd, capture_output=True)
    if r.returncode != 0:
        raise VideoError(f"{Path(path).name}: ffmpeg could not decode the audio ({r.stderr.decode(errors='replace').strip()[-160:]})")
    return np.frombuffer(r.stdout, np.int16).astype(np.float32) / 32768.0


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float = 25.0, audio: np.ndarray | None = None,
              sr: int = 16000, crf: int = 18, metadata: dict[str, str] | None = None,
              finish: Callable[[Path], object] | None = None) -> Path:
    """Write frames (F, H, W, 3) uint8 (H, W even) and optional mono audio as an mp4.
    `metadata`: container tags ({key: value}, any keys: written as mp4 metadata keys);
    `finish(tmp)`: a last step on the complete temporary file before it is renamed into place
    (signing it: `provenance`), so a failure there leaves no output either."""
    import soundfile

    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be (F, H, W, 3) with F >= 1, got {frames.shape}")
    f, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 needs even frame sizes, got {w}x{h}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out)
    try:
        with tempfile.TemporaryDirectory() as td:
            cmd = [ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
                   "-r", str(fps), "-i", "-"]
            if audio is not None:
                wav = Path(td) / "a.wav"
                soundfile.write(wav, np.asarray(audio, np.float32), sr, subtype="PCM_16")
                cmd += ["-i", str(wav), "-c:a", "aac", "-b:a", "128k"]
            for k, v in (metadata or {}).items():
                cmd += ["-metadata", f"{k}={v}"]
            flags = "+faststart+use_metadata_tags" if metadata else "+faststart"
            cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p",
                    "-movflags", flags, str(tmp)]
            r = subprocess.run(cmd, input=frames.tobytes(), capture_output=True)
        if r.returncode != 0:
            raise VideoError(f"ffmpeg failed writing {out.name}: {r.stderr.decode(errors='replace').strip()[-200:]}")
        if finish is not None:
            finish(tmp)
        tmp.replace(out)
    finally:  # failures and interrupts alike: no temporary file stays beside the output
        tmp.unlink(missing_ok=True)
    return out


def temp_path(out: str | os.PathLike) -> Path:
    """The temporary file `write_mp4` writes before renaming it to `out` (hidden, beside it)."""
    out = Path(out)
    return out.with_name(f".{out.stem}.tmp.mp4")


def atomic_write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    import imageio.v3 as iio

    out = Path(path)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    iio.imwrite(tmp, np.asarray(image, np.uint8))
    tmp.replace(out)
    return out


def encode_jpeg(frame: np.ndarray, quality: int = 95) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(frame, np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
