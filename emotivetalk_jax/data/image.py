"""Images as phones and editors write them: the one reader for every image the project takes
(portraits, emotion images, codebook images).

`read_image(path_or_array)` -> (H, W, 3) uint8 RGB, the picture a viewer shows:
- EXIF orientation applied (phones store the sensor's pixels and a tag saying how to turn
  them; JPEG, PNG, TIFF and WebP alike);
- every mode converted by its real value range: 16-bit grey (`I;16*`, and `I` read as 16-bit)
  by 65535 -> 255, 32-bit float (`F`) by 1.0 -> 255, bilevel, palette, CMYK and YCbCr through
  Pillow's converters, 16-bit RGB(A) as Pillow reads it (the high byte);
- transparency (RGBA, grey + alpha, a palette's transparent entry) composited over white,
  as a page shows a cut-out portrait;
- an animated image (GIF, APNG, WebP) gives its first frame, said in a warning; an MPO
  (the multi-picture JPEG some phones write) its main picture, silently;
- a HEIC / HEIF photo (an iPhone's default) through pillow-heif when it is installed, else
  an error that says how to get it or to export a JPEG; an image over Pillow's
  decompression-bomb limit (about 179 megapixels) is refused with its size named.
Arrays get the same treatment by dtype: uint16 by 65535, floats in [0, 1] by 1.0, bool by 1.
Every failure is one line, raised as the caller's `error` class (a ValueError).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from emotivetalk_jax import validate

_WHITE = 255.0


def open_image(path: str | os.PathLike, what: str = "image", *, error=ValueError):
    """The file as an open PIL image (the caller closes it); `error` for a missing or undecodable file."""
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise error(f"{what} {p} does not exist; check the path")
    validate.check_heif(p, what, error=error)
    try:
        return Image.open(p)
    except Exception as e:  # noqa: BLE001 - any decoder failure is one clear error
        raise error(validate.unreadable_image(e, what, p)) from None


def _first_frame(im, what: str, name: str):
    n = getattr(im, "n_frames", 1)
    if n > 1:
        if im.format != "MPO":  # an MPO's later pictures are previews / depth maps, not animation
            validate.warn(f"{what} {name} is animated ({n} frames); using its first frame")
        im.seek(0)
    return im


def _upright(im):
    """EXIF orientation applied; a damaged EXIF block leaves the pixels as stored."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - unreadable metadata is no reason to refuse the pixels
        return im


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255.0
    return np.round(rgb * a + _WHITE * (1.0 - a)).astype(np.uint8)


def pil_to_rgb(im) -> np.ndarray:
    """A PIL image in any mode -> (H, W, 3) uint8 by its real value range (see the module docstring)."""
    mode = im.mode
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA" if ("transparency" in im.info or mode == "PA") else "RGB")
        mode = im.mode
    if mode in ("RGBA", "RGBa", "LA", "La"):
        if mode in ("RGBa", "La"):  # premultiplied: Pillow undoes it
            im = im.convert("RGBA" if mode == "RGBa" else "LA")
        a = np.asarray(im)
        rgb = np.repeat(a[..., :1], 3, -1) if im.mode == "LA" else a[..., :3]
        return _over_white(rgb, a[..., -1])
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.float64)
        return _grey_to_rgb(np.round(np.clip(a, 0, 65535) / 257.0))
    if mode == "F":
        return _grey_to_rgb(np.round(np.clip(np.nan_to_num(np.asarray(im, np.float64)), 0.0, 1.0) * 255.0))
    if mode in ("1", "L"):
        return _grey_to_rgb(np.asarray(im.convert("L")))
    if mode != "RGB":
        im = im.convert("RGB")  # CMYK (multiplicative), YCbCr, RGBX, HSV, LAB
    return np.asarray(im, np.uint8)


def _grey_to_rgb(g: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(g, np.uint8)[..., None], 3, -1)


def array_to_rgb(arr: np.ndarray, what: str = "image", *, error=ValueError) -> np.ndarray:
    """An (H, W), (H, W, 1|2|3|4) array -> (H, W, 3) uint8 by its dtype's range (see the module docstring)."""
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
        raise error(f"{what} must be an (H, W) or (H, W, 1..4) image, got shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = np.round(a / 257.0)
    elif a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float64))
        a = a * 255.0 if a.size and a.max() <= 1.0 else a
    a = np.clip(np.round(a), 0, 255).astype(np.uint8) if a.dtype != np.uint8 else a
    alpha = a[..., -1] if a.shape[-1] in (2, 4) else None
    rgb = a[..., :3] if a.shape[-1] >= 3 else np.repeat(a[..., :1], 3, -1)
    out = rgb if alpha is None else _over_white(rgb, alpha)
    return np.ascontiguousarray(out)


def read_image(image: str | os.PathLike | np.ndarray, what: str = "image", *, error=ValueError) -> np.ndarray:
    """A path or an array -> (H, W, 3) uint8 RGB, upright (see the module docstring)."""
    if not isinstance(image, (str, os.PathLike)):
        return array_to_rgb(image, what, error=error)
    p = Path(image)
    im = open_image(p, what, error=error)
    try:
        with im:
            return np.ascontiguousarray(pil_to_rgb(_upright(_first_frame(im, what, p.name))))
    except Exception as e:  # noqa: BLE001 - a truncated or damaged file fails while decoding
        raise error(validate.unreadable_image(e, what, p)) from None


__all__ = ["read_image", "open_image", "pil_to_rgb", "array_to_rgb"]
