"""Emotion sources (3.5, 6.3) and the conditions they become.

Shape legend: F frames of the generated video (one per 40 ms of the driving audio at 25
fps), Fv frames of a driving video, E expression latent width.

- temporal source, a driving video: per-frame expression latents e_v (Fv, E) from the
  expression encoder, with a codebook their mean moved onto it (`anchor_to_codebook`: the
  driving face's identity out, its emotion, intensity and motion kept), time-stretched to the
  audio's F frames by linear interpolation (frame i of F samples the video at
  (i / (F - 1)) (Fv - 1)), so the whole driving video spans the whole generated clip; they
  bypass Di-CTE;
- utterance sources: an image -> its expression latent; a keyword / free text / speech
  audio -> one of the eight keywords -> the codebook's mean latent. Either way one
  e_cond (E,) that Di-CTE expands over time.

Faces in images and videos are cropped as in `codebook.prepare_face` (dlib face box x
1.8, else a centre square). A video is cropped once, around the face of its first frame.
An expression encoder that reads landmark-aligned faces (`FaceEncoderConfig.aligned`) also gets
every image's 68 landmarks: the caller's, else dlib's (an image), else a video's sidecar
NAME.json or dlib's tracked ones (`data.pose.video_landmarks`); it refuses a face without them.
The expression encoder checkpoint is a folder: `config.json` ({"format": "emotivetalk_jax",
"component": "face_encoders", "config": FaceEncoderConfig fields}) + `state/` (orbax).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from emotivetalk_jax.convert import native
from emotivetalk_jax.emotion.codebook import (CROP_SCALE, encoder_aligned, encoder_image_size, expression_fn, face_crop,
                                              read_image, require_landmarks)
from emotivetalk_jax.emotion.keywords import KEYWORDS, EmotionError

SOURCE_KINDS = ("text", "image", "audio", "video")
ENCODER_COMPONENT = "face_encoders"


@dataclasses.dataclass(frozen=True)
class EmotionSource:
    """What the user gave: `kind` one of SOURCE_KINDS, `value` the text or the file path."""

    kind: str
    value: str

    def __post_init__(self):
        if self.kind not in SOURCE_KINDS:
            raise EmotionError(f"unknown emotion source {self.kind!r}; expected one of {', '.join(SOURCE_KINDS)}")

    @classmethod
    def text(cls, text: str) -> "EmotionSource":
        return cls("text", text)

    @classmethod
    def image(cls, path: str | os.PathLike) -> "EmotionSource":
        return cls("image", str(path))

    @classmethod
    def audio(cls, path: str | os.PathLike) -> "EmotionSource":
        return cls("audio", str(path))

    @classmethod
    def video(cls, path: str | os.PathLike) -> "EmotionSource":
        return cls("video", str(path))


@dataclasses.dataclass(frozen=True)
class EmotionCondition:
    """Either per-frame `e_v` (F, E) (temporal: skip Di-CTE) or one `e_cond` (E,) (through Di-CTE).

    `keyword` names the emotion when one was chosen (text / audio sources); `detail`
    records how (match method, scores, crop, frame counts) for logs and reports.
    """

    source: str
    e_v: np.ndarray | None = None
    e_cond: np.ndarray | None = None
    keyword: str | None = None
    detail: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if (self.e_v is None) == (self.e_cond is None):
            raise ValueError("an EmotionCondition holds exactly one of e_v (temporal) and e_cond (utterance)")

    @property
    def temporal(self) -> bool:
        return self.e_v is not None


# ----------------------------------------------------------------------------- encoder checkpoints


def save_expression_encoder(encoder, folder: str | os.PathLike) -> Path:
    """Write a `FaceEncoders` as config.json + orbax `state/` (the layout `load_expression_encoder` reads)."""
    return native.save_model(encoder, folder, ENCODER_COMPONENT)


def load_expression_encoder(folder: str | os.PathLike):
    """The `FaceEncoders` saved by `save_expression_encoder` (EmotionError if it is not one)."""
    folder = Path(folder).absolute()
    cfg_file = folder / "config.json"
    if not cfg_file.is_file() or not (folder / "state").is_dir():
        raise EmotionError(f"{folder} is not an expression-encoder checkpoint (config.json + state/); "
                           "pass the folder of the trained face encoders")
    meta = json.loads(cfg_file.read_text())
    if meta.get("format") != native.FORMAT or meta.get("component") != ENCODER_COMPONENT:
        raise EmotionError(f"{cfg_file} describes {meta.get('component')!r}, not the face encoders ({ENCODER_COMPONENT})")
    return native.load_model(folder, check=False, component=ENCODER_COMPONENT)


# ----------------------------------------------------------------------------- image and video


def image_condition(path: str | os.PathLike, encoder, *, detect: bool = True,
                    landmarks: np.ndarray | None = None) -> EmotionCondition:
    """A face image -> e_cond (E,) from the expression encoder; `landmarks` (68, 2) the face's in
    the image's pixels, if known (aligned encoders; else dlib's)."""
    x, method, lm = face_crop(read_image(path), encoder_image_size(encoder), detect, landmarks)
    require_landmarks(encoder, lm, f"the emotion image {Path(path).name}")
    e = expression_fn(encoder)(x[None], lm[None] if encoder_aligned(encoder) else None)[0]
    return EmotionCondition("image", e_cond=e, detail={"crop": method})


def resample_frames(e: np.ndarray, num_frames: int) -> np.ndarray:
    """(Fv, E) -> (num_frames, E) by linear interpolation over normalised time (ends kept)."""
    e = np.asarray(e, np.float32)
    if num_frames < 1:
        raise EmotionError(f"need at least one output frame, got {num_frames}")
    if len(e) == 1:
        return np.repeat(e, num_frames, 0)
    pos = np.linspace(0.0, len(e) - 1, num_frames)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(e) - 1)
    w = (pos - lo)[:, None].astype(np.float32)
    return (1 - w) * e[lo] + w * e[hi]


def nearest_row(codebook, e: np.ndarray) -> tuple[str, dict[str, float]]:
    """The keyword whose codebook mean (of the rows with images) is nearest `e` (E,), and every
    such row's distance."""
    d = np.linalg.norm(np.asarray(codebook.means, np.float32) - np.asarray(e, np.float32)[None], axis=-1)
    d = np.where(np.asarray(codebook.counts) > 0, d, np.inf)
    return KEYWORDS[int(d.argmin())], {k: round(float(v), 4) for k, v in zip(KEYWORDS, d) if np.isfinite(v)}


def anchor_to_codebook(e: np.ndarray, codebook) -> tuple[np.ndarray, dict]:
    """A driving video's e_v (Fv, E) with its mean moved onto the codebook, and how (the keyword,
    the intensity, the offset removed, the mean's distance to every row).

    The mean's nearest row (of those with images) names the emotion; the mean's projection on
    the line from the neutral row to that row, clipped to [0, 1], is its intensity; the track
    becomes neutral + intensity (row - neutral) + (e - mean), so every frame keeps its motion
    about the mean. Why: the expression encoder reads the driving face's identity too, an offset
    that stays put over the clip (on the demo up to 8 from the emotion's row, so that a worried
    video lies about as near the sad row), while the backbone was trained on its own face's e_v
    and Di-CTE's e_a (the shipped student on e_a alone), which stays within about 0.5 of the
    codebook row it starts from. Without a neutral row the mean goes to the nearest row.
    """
    e = np.asarray(e, np.float32)
    means, have = np.asarray(codebook.means, np.float32), np.asarray(codebook.counts) > 0
    if not have.any():
        raise EmotionError("the codebook has no images; rebuild it before driving with a video")
    m = e.mean(0)
    keyword, distances = nearest_row(codebook, m)
    k = KEYWORDS.index(keyword)
    row, neutral = means[k], KEYWORDS.index("neutral")
    if k == neutral or not have[neutral]:
        t, anchor = 1.0, row
    else:
        axis = row - means[neutral]
        t = float(np.clip((m - means[neutral]) @ axis / (axis @ axis), 0.0, 1.0))
        anchor = means[neutral] + t * axis
    detail = {"keyword": keyword, "intensity": round(t, 4), "offset": round(float(np.linalg.norm(m - anchor)), 4),
              "distances": distances}
    return e - m + anchor, detail


def _video_landmarks(path, fps: float, max_frames: int | None, landmarks) -> np.ndarray:
    """An emotion video's landmarks (Fv, 68, 2) in its pixels: `landmarks` when given, else
    `data.pose.video_landmarks` (sidecar NAME.json, else dlib); EmotionError when there are none."""
    from emotivetalk_jax.data.pose import PoseError, video_landmarks

    if landmarks is not None:
        return np.asarray(landmarks, np.float32)
    try:
        return video_landmarks(path, fps, max_frames=max_frames, what="emotion video")[0]
    except PoseError as e:
        raise EmotionError(f"this checkpoint's expression encoder reads landmark-aligned faces: {e}") from None


def video_expressions(path: str | os.PathLike, encoder, *, fps: float = 25.0, detect: bool = True,
                      batch_size: int = 16, max_frames: int | None = None,
                      landmarks: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """A driving video -> per-frame expression latents (Fv, E) at `fps`, and how it was cropped.
    Aligned encoders read every frame with its landmarks: `landmarks` (Fv, 68, 2) in the video's
    pixels when known, else found (`_video_landmarks`)."""
    from emotivetalk_jax.data import face as facelib
    from emotivetalk_jax.data import video as vid

    try:
        info = vid.probe(path)
        first = vid.read_frames(path, fps=fps, max_frames=1, info=info)
        if len(first) == 0:
            raise vid.VideoError(f"{Path(path).name}: no frames")
        crop, method = None, "center"
        if detect:
            try:
                crop = facelib.crop_box(facelib.analyze_face(first[0]).box, (info.width, info.height), CROP_SCALE)
                method = "face"
            except (facelib.NoFaceError, ValueError):
                crop = None
        if crop is None:
            side = min(info.width, info.height) // 2 * 2
            crop = ((info.width - side) // 2, (info.height - side) // 2, side, side)
        size = encoder_image_size(encoder)
        frames = vid.read_frames(path, fps=fps, crop=crop, size=size, max_frames=max_frames, info=info)
    except vid.VideoError as e:
        raise EmotionError(f"emotion video: {e}") from None
    if len(frames) == 0:
        raise EmotionError(f"emotion video {path} has no frames")
    lms = None
    if encoder_aligned(encoder):  # into the crop's pixels, a row per frame read
        src = _video_landmarks(path, fps, max_frames, landmarks)
        src = src[np.minimum(np.arange(len(frames)), len(src) - 1)]
        x0, y0, cw, ch = crop
        lms = ((src - np.array([x0, y0], np.float32)) * np.array([size / cw, size / ch], np.float32)).astype(np.float32)
    run = expression_fn(encoder)
    out = []

    def padded(a, n):
        return np.concatenate([a, np.repeat(a[-1:], n - len(a), 0)]) if len(a) < n else a

    for a in range(0, len(frames), batch_size):
        chunk = frames[a : a + batch_size].astype(np.float32) / 127.5 - 1.0
        lm = None if lms is None else padded(lms[a : a + batch_size], batch_size)
        out.append(run(padded(chunk, batch_size), lm)[: len(chunk)])
    return np.concatenate(out), {"crop": method, "video_frames": int(len(frames))}


def video_condition(path: str | os.PathLike, encoder, num_frames: int, *, fps: float = 25.0,
                    detect: bool = True, codebook=None, landmarks: np.ndarray | None = None) -> EmotionCondition:
    """A driving video -> e_v (num_frames, E), the video's expression track (anchored to
    `codebook` when given and not empty: `anchor_to_codebook`) stretched to the audio; `landmarks`
    as `video_expressions` reads them."""
    e, detail = video_expressions(path, encoder, fps=fps, detect=detect, landmarks=landmarks)
    if codebook is not None and np.asarray(codebook.counts).sum() > 0:
        e, anchor = anchor_to_codebook(e, codebook)
        detail = {**detail, **anchor}
    return EmotionCondition("video", e_v=resample_frames(e, num_frames), detail={**detail, "frames": int(num_frames)})
