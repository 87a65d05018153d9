"""Faces: detection + 68 landmarks, lip / face boxes, and masks at every UNet resolution.

EmotiveTalk's EDI block (eq. 10) gates the expression attention with binary bounding
box masks of the lip region and the face region, computed from landmarks of the
reference portrait. Here:

* `FaceDetector` is the interface: image (H, W, 3) uint8 -> list of `Face`.
  `DlibDetector` is the offline default (dlib's HOG detector + 68-point predictor, the
  .dat files shipped inside the `face-recognition-models` wheel).
* `analyze_face(image, face_box=None)` returns the largest face; pass `face_box` for
  portraits where detection fails (cartoons, sketches). A photo without a face raises
  `NoFaceError` with a one-line message naming that option.
* `lip_box`, `face_box` turn landmarks (68, 2) into boxes (x0, y0, x1, y1) in pixels.
* `masks_at_resolutions` rasterises boxes at each size: latent = image / 8, then / 2
  per down block. A cell is 1 when it overlaps the box, so max-pooling a mask by 2
  gives exactly the mask one level down (the masks are consistent across levels).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

FACE_BOX_HINT = "pass the face box explicitly (face_box=(x0, y0, x1, y1) in pixels, or --face-box X0,Y0,X1,Y1)"
LIP = slice(48, 68)


class NoFaceError(ValueError):
    """No face was found; the message says how to pass a face box instead."""


@dataclasses.dataclass(frozen=True)
class Face:
    """A detected face: box (x0, y0, x1, y1) in pixels and landmarks (68, 2) (x, y) or None."""

    box: np.ndarray
    landmarks: np.ndarray | None
    score: float = 1.0

    @property
    def lip_box(self) -> np.ndarray:
        if self.landmarks is not None:
            return lip_box(self.landmarks)
        return lip_box_from_face_box(self.box)

    @property
    def face_box(self) -> np.ndarray:
        return face_box(self.landmarks) if self.landmarks is not None else np.asarray(self.box, np.float32)


class FaceDetector(Protocol):
    def __call__(self, image: np.ndarray) -> list[Face]: ...

    def landmarks_in_box(self, image: np.ndarray, box: Sequence[float]) -> np.ndarray: ...


def dlib_model_dir() -> Path:
    """The folder holding shape_predictor_68_face_landmarks.dat (face-recognition-models wheel)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("face landmarks need the `face-recognition-models` package: pip install face-recognition-models dlib-bin")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


@functools.lru_cache(maxsize=1)
def _dlib_models():
    try:
        import dlib
    except ImportError as e:  # pragma: no cover - dependency declared in pyproject
        raise ModuleNotFoundError("face detection needs dlib: pip install dlib-bin") from e
    path = dlib_model_dir() / "shape_predictor_68_face_landmarks.dat"
    return dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(str(path))


class DlibDetector:
    """dlib HOG frontal-face detector + 68-point shape predictor (iBUG 300-W layout)."""

    def __init__(self, upsample: int = 1, min_score: float = -0.3):
        self.upsample = upsample
        self.min_score = min_score

    def __call__(self, image: np.ndarray) -> list[Face]:
        dlib, det, pred = _dlib_models()
        img = _as_rgb_uint8(image)
        rects, scores, _ = det.run(img, self.upsample, self.min_score)
        faces = []
        for r, s in zip(rects, scores):
            box = np.array([r.left(), r.top(), r.right(), r.bottom()], np.float32)
            faces.append(Face(box, self._predict(img, r), float(s)))
        return faces

    def landmarks_in_box(self, image: np.ndarray, box: Sequence[float]) -> np.ndarray:
        dlib, _, _ = _dlib_models()
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        return self._predict(_as_rgb_uint8(image), dlib.rectangle(x0, y0, x1, y1))

    @staticmethod
    def _predict(img: np.ndarray, rect) -> np.ndarray:
        _, _, pred = _dlib_models()
        shape = pred(img, rect)
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise ValueError(f"expected an image (H, W, 3), got shape {img.shape}")
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = np.clip(np.round(img * 255.0 if img.max() <= 1.0 else img), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def analyze_face(image: np.ndarray, face_box: Sequence[float] | None = None,
                 detector: FaceDetector | None = None, what: str = "the image") -> Face:
    """The largest face in `image`, or the user's `face_box` (landmarks predicted inside it).

    With a user box, landmarks that fall outside it are discarded and the lip box comes
    from the face box's geometry (lower middle third), which suits cartoons and sketches.
    """
    img = _as_rgb_uint8(image)
    det = detector or DlibDetector()
    h, w = img.shape[:2]
    if face_box is not None:
        box = np.asarray(face_box, np.float32)
        if box.shape != (4,) or not (0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h):
            raise ValueError(f"face box must be (x0, y0, x1, y1) with 0 <= x0 < x1 <= {w}, 0 <= y0 < y1 <= {h}; got {list(face_box)}")
        lm = det.landmarks_in_box(img, box)
        inside = (lm[:, 0] >= box[0]) & (lm[:, 0] <= box[2]) & (lm[:, 1] >= box[1]) & (lm[:, 1] <= box[3])
        return Face(box, lm if inside.all() else None)
    faces = det(img)
    if not faces:
        raise NoFaceError(f"no face found in {what}; {FACE_BOX_HINT}")
    return max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))


def track_landmarks(frames: np.ndarray, det: FaceDetector, every: int = 5) -> np.ndarray | None:
    """68 landmarks per frame (N, 68, 2) of the largest face, re-detected every `every` frames
    (in between, predicted inside the last box); None when a detection finds no face first."""
    out = np.zeros((len(frames), 68, 2), np.float32)
    box = None
    for i, fr in enumerate(frames):
        if i % every == 0 or box is None:
            faces = det(fr)
            if faces:
                box = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])).box
        if box is None:
            return None
        out[i] = det.landmarks_in_box(fr, box)
    return out


# ----------------------------------------------------------------------------- boxes


def _bbox(points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, np.float32)
    return np.array([p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()], np.float32)


def _expand(box: np.ndarray, left: float, top: float, right: float, bottom: float) -> np.ndarray:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    return np.array([x0 - left * w, y0 - top * h, x1 + right * w, y1 + bottom * h], np.float32)


def lip_box(landmarks: np.ndarray, margin: float = 0.15) -> np.ndarray:
    """Box around the 20 mouth points (48..67), grown by `margin` of its size per side."""
    lm = np.asarray(landmarks)
    if lm.shape != (68, 2):
        raise ValueError(f"landmarks must be (68, 2), got {lm.shape}")
    return _expand(_bbox(lm[LIP]), margin, margin, margin, margin)


def face_box(landmarks: np.ndarray, forehead: float = 0.25) -> np.ndarray:
    """Box around all 68 points, grown upward by `forehead` of its height (brows to hairline)."""
    lm = np.asarray(landmarks)
    if lm.shape != (68, 2):
        raise ValueError(f"landmarks must be (68, 2), got {lm.shape}")
    return _expand(_bbox(lm), 0.02, forehead, 0.02, 0.02)


def lip_box_from_face_box(box: Sequence[float]) -> np.ndarray:
    """Lip box guessed from a face box alone: x in [0.25, 0.75], y in [0.62, 0.92] of it."""
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    return np.array([x0 + 0.25 * w, y0 + 0.62 * h, x0 + 0.75 * w, y0 + 0.92 * h], np.float32)


def clip_box(box: np.ndarray, image_size: int | tuple[int, int]) -> np.ndarray:
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    return np.clip(np.asarray(box, np.float32), 0, [w, h, w, h])


def crop_box(box: Sequence[float], image_wh: tuple[int, int], scale: float = 1.8) -> tuple[int, int, int, int]:
    """Square crop (x, y, side, side) around a face box, `scale` x its larger side,
    shifted (and if needed shrunk) to stay inside the image. Side is even."""
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = image_wh
    side = min(scale * max(x1 - x0, y1 - y0), w, h)
    side = int(side) // 2 * 2
    if side < 2:
        raise ValueError(f"face box {list(box)} is too small to crop")
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    x = int(round(min(max(cx - side / 2, 0), w - side)))
    y = int(round(min(max(cy - side / 2, 0), h - side)))
    return x, y, side, side


# ----------------------------------------------------------------------------- masks


def unet_mask_sizes(image_size: int, num_levels: int = 4, vae_factor: int = 8) -> list[int]:
    """Latent side image/8, then halved per down block: e.g. 512 -> [64, 32, 16, 8]."""
    if image_size % (vae_factor * 2 ** (num_levels - 1)):
        raise ValueError(f"image size {image_size} must divide by {vae_factor * 2 ** (num_levels - 1)} for {num_levels} levels")
    return [image_size // vae_factor // 2**i for i in range(num_levels)]


def box_mask(box: Sequence[float], image_size: int | tuple[int, int], out_size: int | tuple[int, int]) -> np.ndarray:
    """(h, w, 1) float32 mask: 1 where a cell of the `out_size` grid overlaps the box."""
    ih, iw = (image_size, image_size) if isinstance(image_size, int) else image_size
    oh, ow = (out_size, out_size) if isinstance(out_size, int) else out_size
    x0, y0, x1, y1 = (float(v) for v in box)
    sx, sy = ow / iw, oh / ih
    gx = np.arange(ow)
    gy = np.arange(oh)
    mx = (gx < x1 * sx) & (gx + 1 > x0 * sx)
    my = (gy < y1 * sy) & (gy + 1 > y0 * sy)
    return (my[:, None] & mx[None, :]).astype(np.float32)[..., None]


def masks_at_resolutions(lip_box: Sequence[float], face_box: Sequence[float], image_size: int | tuple[int, int],
                         sizes: Sequence[int]) -> dict[int, dict[str, np.ndarray]]:
    """{size: {"lip": (s, s, 1), "face": (s, s, 1)}} binary float32 masks, channels-last."""
    return {int(s): {"lip": box_mask(lip_box, image_size, s), "face": box_mask(face_box, image_size, s)} for s in sizes}
