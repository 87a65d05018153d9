"""The emotion-to-expression codebook (6.3): keyword -> mean expression latent e_cond.

`build_codebook` runs the pretrained expression encoder over labelled face images and
keeps, per keyword, the mean latent and the number of images. Labels come from the path:
the nearest parent folder named after a keyword or one of its word forms
(`happy/001.png`, `fear/x.jpg`), else the file name's first token (`happy_001.png`,
`sad-3.jpg`). Unlabelled images are skipped and listed.

Preprocessing (`prepare_face`): the largest face dlib finds is cropped as the training
data is (a square of 1.8 x the face box, `data/prepare.py`'s default) and resized to the
encoder's input size; when no face is found (small, stylised or tightly cropped images)
the image is centre-cropped to a square and resized instead. Pixels go to [-1, 1].
Encoders that read landmark-aligned faces (`FaceEncoderConfig.aligned`) also get the face's 68
landmarks in the crop (`face_crop`: dlib's, or the caller's); an image without them is refused.

On disk a codebook is a folder with `codebook.safetensors` (`means` (8, E) float32,
`counts` (8,) int64, rows in `KEYWORDS` order) and `codebook.json` (keywords, counts,
latent width, the images used). No pickle anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from emotivetalk_jax.emotion.keywords import KEYWORDS, EmotionError, normalize_keyword, parse_keyword

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".heic", ".heif")
CROP_SCALE = 1.8
_FORMAT = "emotivetalk_jax.codebook"
_TOKEN = re.compile(r"[^A-Za-z]+")


@dataclasses.dataclass(frozen=True)
class Codebook:
    """Per-keyword mean expression latents: `means` (8, E), `counts` (8,), rows in KEYWORDS order."""

    means: np.ndarray
    counts: np.ndarray
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def expr_dim(self) -> int:
        return int(self.means.shape[-1])

    def lookup(self, keyword: str) -> np.ndarray:
        """e_cond (E,) for a keyword (or a word form of one)."""
        kw = parse_keyword(keyword)
        i = KEYWORDS.index(kw)
        if self.counts[i] <= 0:
            have = [k for k, c in zip(KEYWORDS, self.counts) if c > 0]
            raise EmotionError(f"the codebook has no images for {kw!r}; rebuild it with {kw} faces "
                               f"(it has: {', '.join(have) or 'nothing'})")
        return np.asarray(self.means[i], np.float32)


# ----------------------------------------------------------------------------- images


def label_for(path: Path, root: Path) -> str | None:
    """The keyword of an image: nearest keyword-named parent folder, else the file name's first token."""
    rel = path.relative_to(root)
    for part in reversed(rel.parts[:-1]):
        kw = normalize_keyword(part)
        if kw is not None:
            return kw
    tokens = [t for t in _TOKEN.split(path.stem) if t]
    return normalize_keyword(tokens[0]) if tokens else None


def read_image(path: str | os.PathLike, what: str = "emotion image") -> np.ndarray:
    """(H, W, 3) uint8 RGB, upright (`data.image.read_image`); EmotionError for anything unreadable."""
    from emotivetalk_jax.data.image import read_image as read_any

    return read_any(path, what, error=EmotionError)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC))


def face_crop(image: np.ndarray, size: int, detect: bool = True,
              landmarks: np.ndarray | None = None) -> tuple[np.ndarray, str, np.ndarray | None]:
    """(H, W, 3) uint8 -> ((size, size, 3) float32 in [-1, 1], "face" | "center", the face's 68
    landmarks (68, 2) in the crop's pixels or None): `landmarks` (the image's pixels) when given,
    else those of the face dlib found."""
    from emotivetalk_jax.data import face as facelib

    img = np.asarray(image)
    h, w = img.shape[:2]
    method = "center"
    crop = None
    lm = None if landmarks is None else np.asarray(landmarks, np.float32)
    if detect:
        try:
            found = facelib.analyze_face(img)
            crop = facelib.crop_box(found.box, (w, h), CROP_SCALE)
            method = "face"
            lm = found.landmarks if lm is None else lm
        except (facelib.NoFaceError, ValueError):
            crop = None
    if crop is None:
        side = min(h, w)
        crop = ((w - side) // 2, (h - side) // 2, side, side)
    x, y, cw, ch = crop
    out = _resize(np.ascontiguousarray(img[y : y + ch, x : x + cw]), size)
    if lm is not None:
        lm = ((lm - np.array([x, y], np.float32)) * np.array([size / cw, size / ch], np.float32)).astype(np.float32)
    return out.astype(np.float32) / 127.5 - 1.0, method, lm


def prepare_face(image: np.ndarray, size: int, detect: bool = True) -> tuple[np.ndarray, str]:
    """(H, W, 3) uint8 -> ((size, size, 3) float32 in [-1, 1], "face" | "center")."""
    x, method, _ = face_crop(image, size, detect)
    return x, method


def encoder_aligned(encoder) -> bool:
    """Whether a face encoder reads landmark-aligned faces (`FaceEncoderConfig.aligned`)."""
    return bool(getattr(getattr(encoder, "cfg", None), "aligned", False))


def require_landmarks(encoder, landmarks, what: str) -> None:
    """EmotionError (one line) when an aligned `encoder` would read `what` without its landmarks."""
    if encoder_aligned(encoder) and landmarks is None:
        raise EmotionError(f"this checkpoint's expression encoder reads landmark-aligned faces, and no face "
                           f"landmarks were found for {what}; give a photo or video of a face seen from the front "
                           "(dlib must find it)")


def expression_fn(encoder) -> Callable[..., np.ndarray]:
    """A jitted `images (N, S, S, 3), landmarks (N, 68, 2) or None -> e (N, E)` for a `FaceEncoders`
    (or anything with `encode_expression`); landmarks are read by aligned encoders only."""
    import jax
    from flax import nnx

    graphdef, state = nnx.split(encoder)
    run = jax.jit(lambda st, x, lm: nnx.merge(graphdef, st).encode_expression(x, lm))

    def expressions(images, landmarks=None):
        lm = None if landmarks is None else np.asarray(landmarks, np.float32)
        return np.asarray(run(state, np.asarray(images, np.float32), lm))

    return expressions


def encoder_image_size(encoder) -> int:
    cfg = getattr(encoder, "cfg", None)
    if cfg is None or not hasattr(cfg, "image_size"):
        raise EmotionError("the expression encoder has no cfg.image_size; pass a FaceEncoders model")
    return int(cfg.image_size)


def encode_images(images: Iterable[np.ndarray], encoder, *, detect: bool = True, batch_size: int = 16,
                  progress: Callable | None = None) -> tuple[np.ndarray, list[str]]:
    """uint8 images -> (N, E) expression latents and the crop method per image.

    Batches are padded to `batch_size` so the encoder compiles once.
    """
    size = encoder_image_size(encoder)
    run = expression_fn(encoder)
    aligned = encoder_aligned(encoder)
    out, methods, batch, marks = [], [], [], []

    def flush():
        x = np.stack(batch + [batch[-1]] * (batch_size - len(batch)))
        lm = np.stack(marks + [marks[-1]] * (batch_size - len(marks))) if aligned else None
        out.append(run(x, lm)[: len(batch)])
        batch.clear()
        marks.clear()

    items = list(images)
    for i, img in enumerate(progress(items) if progress else items):
        x, m, lm = face_crop(img, size, detect)
        require_landmarks(encoder, lm, f"image {i} (detection {'off' if not detect else 'found no face'})")
        batch.append(x)
        marks.append(lm)
        methods.append(m)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not out:
        return np.zeros((0, 0), np.float32), methods
    return np.concatenate(out).astype(np.float32), methods


def build_codebook(images_dir: str | os.PathLike, expression_encoder, *, detect: bool = True,
                   batch_size: int = 16, allow_missing: bool = False, progress: Callable | None = None) -> Codebook:
    """Labelled face images under `images_dir` -> a Codebook (see the module docstring).

    Fails listing the keywords with no image unless `allow_missing` (then those rows are
    empty and `lookup` refuses them).
    """
    root = Path(images_dir)
    if not root.is_dir():
        raise EmotionError(f"{root} is not a folder; pass a folder of labelled face images (e.g. happy/001.png)")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    labelled = [(p, label_for(p, root)) for p in files]
    used = [(p, k) for p, k in labelled if k is not None]
    skipped = [str(p.relative_to(root)) for p, k in labelled if k is None]
    found = {k for _, k in used}
    missing = [k for k in KEYWORDS if k not in found]
    if not used:
        raise EmotionError(f"no labelled images in {root}; name sub-folders or file prefixes after the emotions: "
                           f"{', '.join(KEYWORDS)}")
    if missing and not allow_missing:
        raise EmotionError(f"{root} has no images for: {', '.join(missing)} (label images by sub-folder or file "
                           "prefix; --allow-missing builds a partial codebook)")
    latents, methods = encode_images((read_image(p, "codebook image") for p, _ in used), expression_encoder,
                                     detect=detect, batch_size=batch_size, progress=progress)
    labels = np.array([KEYWORDS.index(k) for _, k in used])
    means = np.zeros((len(KEYWORDS), latents.shape[-1]), np.float32)
    counts = np.bincount(labels, minlength=len(KEYWORDS)).astype(np.int64)
    for i in range(len(KEYWORDS)):
        if counts[i]:
            means[i] = latents[labels == i].mean(0)
    meta = {
        "images": [{"path": str(p.relative_to(root)), "keyword": k, "crop": m} for (p, k), m in zip(used, methods)],
        "skipped": skipped,
        "faces_detected": int(sum(m == "face" for m in methods)),
    }
    return Codebook(means, counts, meta)


# ----------------------------------------------------------------------------- disk


def save_codebook(codebook: Codebook, out: str | os.PathLike) -> Path:
    """Write `out/codebook.safetensors` + `out/codebook.json` (atomically, file by file)."""
    from safetensors.numpy import save_file

    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder; choose another output path")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "codebook.safetensors.tmp"
    save_file({"means": np.ascontiguousarray(codebook.means, np.float32),
               "counts": np.ascontiguousarray(codebook.counts, np.int64)}, str(tmp), metadata={"format": _FORMAT})
    os.replace(tmp, folder / "codebook.safetensors")
    info = {"format": _FORMAT, "keywords": list(KEYWORDS), "expr_dim": codebook.expr_dim,
            "counts": {k: int(c) for k, c in zip(KEYWORDS, codebook.counts)}, **codebook.meta}
    tmpj = folder / "codebook.json.tmp"
    tmpj.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmpj, folder / "codebook.json")
    return folder


def load_codebook(path: str | os.PathLike) -> Codebook:
    """A codebook folder (or its codebook.safetensors) written by `save_codebook`."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    p = Path(path)
    folder = p.parent if p.suffix == ".safetensors" else p
    file = folder / "codebook.safetensors"
    if not file.is_file():
        raise EmotionError(f"no codebook at {p}; build one with `emotivetalk codebook build IMAGES_DIR OUT`")
    try:
        tensors = load_file(str(file))
        means, counts = tensors["means"], tensors["counts"]
    except (SafetensorError, OSError, KeyError) as e:
        raise EmotionError(f"{file} is not a codebook ({type(e).__name__}: {e}); rebuild it") from None
    if means.ndim != 2 or means.shape[0] != len(KEYWORDS) or counts.shape != (len(KEYWORDS),):
        raise EmotionError(f"{file} holds means {means.shape} / counts {counts.shape}; expected ({len(KEYWORDS)}, E) / "
                           f"({len(KEYWORDS)},); rebuild it")
    meta_file = folder / "codebook.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if meta.get("keywords", list(KEYWORDS)) != list(KEYWORDS):
        raise EmotionError(f"{meta_file} lists keywords {meta['keywords']}; expected {list(KEYWORDS)}; rebuild it")
    return Codebook(means.astype(np.float32), counts.astype(np.int64), meta)
