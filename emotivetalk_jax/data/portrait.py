"""Portraits for generation: read, find the face, align, crop to the model resolution, paste back.

Shape legend: R model resolution (square), H, W source image size.

`prepare_portrait(image, resolution)`:
1. read the image (a path or an array) upright, as RGB (`data.image.read_image`);
2. find the largest face (dlib, `data.face.analyze_face`), or take the user's face box
   (`face_box=(x0, y0, x1, y1)` in source pixels) when detection fails;
3. align: rotate about the face centre so that the eyes are level (when landmarks exist);
4. crop a square of `crop_scale` x the face box's larger side around the face (shifted
   to stay inside the image where it can), resample it to R x R;
5. lip and face boxes in crop pixels (from the 68 landmarks, `data.face.lip_box/face_box`;
   without landmarks, from the face box's geometry) for EDI's masks.
The crop is an affine map `to_source` (crop pixel -> source pixel), so `paste_back` puts a
generated frame into the original photo with a feathered edge.

`crop=False` uses the whole image (centre square if it is not square) as the model input;
`boxes=(lip_box, face_box)` in source pixels skips detection (e.g. synthetic portraits
whose landmarks are known); `boxes=(lip_box, face_box, landmarks (68, 2))` gives the landmarks
too, which face encoders that read aligned faces need (`Portrait.landmarks`, in crop pixels).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np

from emotivetalk_jax.data import face as facelib


class PortraitError(ValueError):
    """A portrait that cannot be used; the message says why, in one line."""


@dataclasses.dataclass(frozen=True)
class Portrait:
    image: np.ndarray  # (R, R, 3) uint8, the model's reference x_ref
    lip_box: np.ndarray  # (4,) x0, y0, x1, y1 in crop pixels
    face_box: np.ndarray  # (4,)
    source: np.ndarray  # (H, W, 3) uint8, the image as given
    to_source: np.ndarray  # (2, 3) affine: crop pixel (u, v, 1) -> source pixel (x, y)
    detail: dict = dataclasses.field(default_factory=dict)
    landmarks: np.ndarray | None = None  # (68, 2) in crop pixels; None where only boxes were given

    @property
    def resolution(self) -> int:
        return int(self.image.shape[0])


def read_image(image: str | os.PathLike | np.ndarray, what: str = "portrait") -> np.ndarray:
    """(H, W, 3) uint8 from a path or an array, upright and by its real value range
    (`data.image.read_image`); PortraitError for missing / unreadable files and tiny images."""
    from emotivetalk_jax.data.image import read_image as read_any

    arr = read_any(image, what, error=PortraitError)
    if min(arr.shape[:2]) < 8:
        raise PortraitError(f"{what} must be an (H, W, 3) image of at least 8 x 8 pixels, got shape {arr.shape}")
    return arr


def _warp(img: np.ndarray, out_to_in: np.ndarray, size: tuple[int, int], *, resample=None) -> np.ndarray:
    """Sample `img` at out_to_in @ (u, v, 1) for every output pixel: (size[1], size[0], C)."""
    from PIL import Image

    a = out_to_in
    im = Image.fromarray(img)
    out = im.transform(size, Image.Transform.AFFINE, data=tuple(a[0]) + tuple(a[1]),
                       resample=resample if resample is not None else Image.Resampling.BICUBIC)
    return np.asarray(out)


def _invert(a: np.ndarray) -> np.ndarray:
    m = np.vstack([a, [0.0, 0.0, 1.0]])
    return np.linalg.inv(m)[:2]


def _apply(a: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.asarray(pts, np.float64) @ a[:, :2].T + a[:, 2]


def _eye_angle(landmarks: np.ndarray) -> float:
    left, right = landmarks[36:42].mean(0), landmarks[42:48].mean(0)
    return math.atan2(float(right[1] - left[1]), float(right[0] - left[0]))


def _boxes_in_crop(face: facelib.Face, to_crop: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    if face.landmarks is not None:
        lm = _apply(to_crop, face.landmarks).astype(np.float32)
        lip, fb = facelib.lip_box(lm), facelib.face_box(lm)
    else:
        x0, y0, x1, y1 = face.box
        corners = _apply(to_crop, np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]))
        fb = np.array([*corners.min(0), *corners.max(0)], np.float32)
        lip = facelib.lip_box_from_face_box(fb)
    return facelib.clip_box(lip, resolution), facelib.clip_box(fb, resolution)


def prepare_portrait(image: str | os.PathLike | np.ndarray, resolution: int, *, face_box=None, crop: bool = True,
                     align: bool = True, crop_scale: float = 1.8, boxes=None, detector=None) -> Portrait:
    """The model's view of a portrait (see the module docstring)."""
    name = Path(image).name if isinstance(image, (str, os.PathLike)) else "the portrait"
    src = read_image(image)
    h, w = src.shape[:2]
    detail: dict = {}
    given = None
    if boxes is not None:
        if len(boxes) not in (2, 3):
            raise PortraitError("boxes must be (lip_box, face_box) or (lip_box, face_box, landmarks)")
        lip_src, face_src = (np.asarray(b, np.float32) for b in boxes[:2])
        given = np.asarray(boxes[2], np.float32) if len(boxes) == 3 else None
        if given is not None and given.shape != (68, 2):
            raise PortraitError(f"the landmarks given with the boxes must be (68, 2), got shape {given.shape}")
        face = facelib.Face(face_src, None)  # cropped by the boxes alone, with or without landmarks
        detail["faces"] = "given"
    else:
        try:
            face = facelib.analyze_face(src, face_box, detector, what=f"portrait {name}")
        except facelib.NoFaceError as e:
            raise PortraitError(str(e)) from None
        except ValueError as e:  # a bad user box
            raise PortraitError(str(e).splitlines()[0]) from None
        detail["faces"] = "user box" if face_box is not None else "detected"
    if not crop:
        side = min(h, w)
        x, y = (w - side) / 2, (h - side) / 2
        s = side / resolution
        to_source = np.array([[s, 0.0, x], [0.0, s, y]])
        angle = 0.0
    else:
        fb = face.face_box if face.landmarks is not None else np.asarray(face.box, np.float32)
        angle = _eye_angle(face.landmarks) if (align and face.landmarks is not None) else 0.0
        cx, cy = 0.5 * (fb[0] + fb[2]), 0.5 * (fb[1] + fb[3])
        side = min(crop_scale * max(fb[2] - fb[0], fb[3] - fb[1]), h, w)
        if side < 8:
            raise PortraitError(f"the face in {name} is too small ({side:.0f} px crop); pass a larger photo")
        cx, cy = min(max(cx, side / 2), w - side / 2), min(max(cy, side / 2), h - side / 2)
        s = side / resolution
        c, si = math.cos(angle), math.sin(angle)
        # crop pixel (u, v) -> source: centre + R(angle) (s (u - R/2), s (v - R/2))
        to_source = np.array([[c * s, -si * s, 0.0], [si * s, c * s, 0.0]])
        to_source[:, 2] = np.array([cx, cy]) - to_source[:, :2] @ np.array([resolution / 2, resolution / 2])
    detail.update(crop_side=float(side), angle_deg=round(math.degrees(angle), 2), crop=bool(crop))
    to_crop = _invert(to_source)
    if boxes is not None:
        lip = _apply(to_crop, lip_src.reshape(2, 2)).reshape(-1).astype(np.float32)
        fbox = _apply(to_crop, face_src.reshape(2, 2)).reshape(-1).astype(np.float32)
        lip, fbox = facelib.clip_box(lip, resolution), facelib.clip_box(fbox, resolution)
    else:
        lip, fbox = _boxes_in_crop(face, to_crop, resolution)
    out = _resample_crop(src, to_source, resolution)
    lm = face.landmarks if given is None else given
    lm = None if lm is None else _apply(to_crop, lm).astype(np.float32)
    return Portrait(out, lip, fbox, src, to_source, detail, lm)


def _resample_crop(src: np.ndarray, to_source: np.ndarray, resolution: int) -> np.ndarray:
    """Warp at the source scale, then area-resize to R (no aliasing when shrinking a large photo)."""
    from PIL import Image

    s = float(np.hypot(*to_source[:, 0]))
    if s <= 1.0:
        return _warp(src, to_source, (resolution, resolution))
    big = int(math.ceil(resolution * s))
    k = resolution / big
    a = to_source.copy()
    a[:, :2] *= k
    a[:, 2] = to_source[:, 2]
    img = Image.fromarray(_warp(src, a, (big, big)))
    return np.asarray(img.resize((resolution, resolution), Image.Resampling.LANCZOS))


def _feather(resolution: int, width: float = 0.06) -> np.ndarray:
    """(R, R) weights: 1 inside, falling linearly to 0 over `width` of the side at the edges."""
    t = (np.arange(resolution) + 0.5) / resolution
    ramp = np.clip(np.minimum(t, 1 - t) / width, 0.0, 1.0)
    return np.minimum(ramp[:, None], ramp[None, :])


def paste_back(frames: np.ndarray, portrait: Portrait, *, even: bool = True) -> np.ndarray:
    """Generated crops (F, R, R, 3) -> full frames (F, H', W', 3) in the source framing.

    `even`: trim one pixel row / column if needed (H.264 wants even sizes)."""
    from PIL import Image

    src = portrait.source
    h, w = src.shape[:2]
    r = frames.shape[1]
    to_crop = _invert(portrait.to_source)
    scale = r / portrait.resolution
    if scale != 1:
        to_crop = to_crop * scale
    weight = _warp((_feather(r) * 255).astype(np.uint8), to_crop, (w, h), resample=Image.Resampling.BILINEAR)
    alpha = (weight.astype(np.float32) / 255.0)[..., None]
    base = src.astype(np.float32)
    out = np.empty((len(frames), h, w, 3), np.uint8)
    for i, f in enumerate(frames):
        warped = _warp(np.asarray(f, np.uint8), to_crop, (w, h)).astype(np.float32)
        out[i] = np.clip(np.round(alpha * warped + (1 - alpha) * base), 0, 255).astype(np.uint8)
    if even:
        out = out[:, : h // 2 * 2, : w // 2 * 2]
    return out


__all__ = ["Portrait", "PortraitError", "prepare_portrait", "paste_back", "read_image"]
