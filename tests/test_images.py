"""Images and videos as phones and editors write them (issue 34): one table of formats, each
read by `data.image.read_image` (the reader behind every portrait, emotion and codebook
image) and compared with the picture a viewer shows; phone videos with a rotation tag.

The expected pictures are computed here from the stored pixels, independently of the reader:
the EXIF orientations from their definition (the tag says how to turn the stored pixels),
16-bit values by 65535 -> 255, alpha over white. Cheap: small images, no model.
"""

from __future__ import annotations

import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emotivetalk_jax.data.image import read_image
from emotivetalk_jax.validate import InputWarning

ASSETS = Path(__file__).resolve().parents[1] / "emotivetalk_jax" / "assets"

# the pixels a camera stores for an upright scene `u` under each EXIF orientation
STORED = {1: lambda u: u, 2: lambda u: u[:, ::-1], 3: lambda u: np.rot90(u, 2), 4: lambda u: u[::-1],
          5: lambda u: u.transpose(1, 0, 2), 6: lambda u: np.rot90(u, 1), 7: lambda u: np.rot90(u, 1)[:, ::-1],
          8: lambda u: np.rot90(u, -1)}


def save(path: Path, pixels, orientation: int | None = None, **kw) -> Path:
    """`pixels` (an array or a PIL image) saved as `path`, with an EXIF orientation tag if given."""
    im = pixels if isinstance(pixels, Image.Image) else Image.fromarray(np.ascontiguousarray(pixels))
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif
    im.save(path, **kw)
    return path


def phone_photo(upright: np.ndarray, path: Path, orientation: int = 6) -> tuple[Path, np.ndarray]:
    """A JPEG stored as a phone stores it (pixels turned, EXIF orientation tag) and the picture a
    viewer shows for it: its own stored pixels turned back (JPEG is lossy, so not `upright`)."""
    save(path, STORED[orientation](upright), orientation, quality=92)
    with Image.open(path) as im:
        stored = np.asarray(im.convert("RGB"))  # the raw pixels, no orientation applied
    shown = {1: stored, 3: np.rot90(stored, 2), 6: np.rot90(stored, -1), 8: np.rot90(stored, 1)}[orientation]
    return path, np.ascontiguousarray(shown)


def png16(path: Path, a: np.ndarray) -> Path:
    """A 16-bit PNG (grey, grey + alpha, RGB or RGBA by the last axis), as editors and scanners export it."""
    a = np.asarray(a, ">u2")
    a = a[..., None] if a.ndim == 2 else a
    h, w, c = a.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\0" + a[y].tobytes() for y in range(h))
    head = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"))


def over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255
    return np.round(rgb * a + 255 * (1 - a)).astype(np.uint8)


def rgb3(g: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(g, np.uint8)[..., None], 3, -1)


def test_image_formats_read_as_shown(tmp_path):
    """Every row: a file as a phone / editor writes it -> the (H, W, 3) uint8 picture a viewer shows."""
    with Image.open(ASSETS / "portrait.png") as im:
        u = np.asarray(im.convert("RGB"))[40:120, 70:130]  # non-square: a wrong turn changes the shape
    h, w = u.shape[:2]
    g = grey(u)
    rng = np.random.default_rng(0)
    alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
    alpha[:4] = 0  # fully transparent rows: white
    rows = [(f"PNG, EXIF orientation {o}", save(tmp_path / f"o{o}.png", STORED[o](u), o), u, 0) for o in STORED]
    for o in (3, 6, 8):
        path, shown = phone_photo(u, tmp_path / f"phone{o}.jpg", o)
        rows.append((f"phone JPEG, EXIF orientation {o}", path, shown, 0))
    # 16-bit grey: the 8-bit value x 257 plus up to half a level of noise rounds back to it
    g16 = g.astype(np.int64) * 257 + rng.integers(-128, 129, g.shape)
    rows += [
        ("16-bit grey PNG", png16(tmp_path / "g16.png", np.clip(g16, 0, 65535)), rgb3(g), 0),
        ("16-bit grey PNG, white", png16(tmp_path / "w16.png", np.full((h, w), 65535)), rgb3(np.full((h, w), 255)), 0),
        ("16-bit RGB PNG", png16(tmp_path / "rgb16.png", u.astype(np.uint16) * 257), u, 1),
        ("16-bit RGBA PNG", png16(tmp_path / "rgba16.png", np.dstack([u, alpha]).astype(np.uint16) * 257),
         over_white(u, alpha), 1),
        ("16-bit grey + alpha PNG", png16(tmp_path / "la16.png", np.dstack([g, alpha]).astype(np.uint16) * 257),
         over_white(rgb3(g), alpha), 1),
        ("8-bit grey PNG", save(tmp_path / "g8.png", g), rgb3(g), 0),
        ("grey + alpha PNG", save(tmp_path / "la.png", Image.fromarray(np.dstack([g, alpha]), "LA")),
         over_white(rgb3(g), alpha), 0),
        ("RGBA PNG", save(tmp_path / "rgba.png", np.dstack([u, alpha])), over_white(u, alpha), 0),
        ("bilevel PNG", save(tmp_path / "bw.png", Image.fromarray(g > 128)), rgb3(np.where(g > 128, 255, 0)), 0),
        ("32-bit int TIFF (16-bit values)", save(tmp_path / "i32.tif", Image.fromarray(g.astype(np.int32) * 257)),
         rgb3(g), 0),
        ("float TIFF in [0, 1]", save(tmp_path / "f.tif", Image.fromarray((g / 255).astype(np.float32))), rgb3(g), 0),
    ]
    pal = Image.fromarray(u).quantize(32)
    rows.append(("palette PNG", save(tmp_path / "p.png", pal), np.asarray(pal.convert("RGB")), 0))
    idx = np.asarray(pal)
    clear = int(idx[0, 0])
    rows.append(("palette PNG with a transparent entry", save(tmp_path / "pt.png", pal, transparency=clear),
                 np.where((idx == clear)[..., None], 255, np.asarray(pal.convert("RGB"))).astype(np.uint8), 0))
    cmyk = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)  # multiplicative: r = (255 - c)(255 - k) / 255
    want = np.round((255.0 - cmyk[..., :3]) * (255.0 - cmyk[..., 3:]) / 255).astype(np.uint8)
    rows.append(("CMYK TIFF", save(tmp_path / "cmyk.tif", Image.fromarray(cmyk, "CMYK")), want, 1))
    failures = []
    for name, path, expected, tol in rows:
        got = read_image(path)
        if got.dtype != np.uint8 or got.shape != expected.shape:
            failures.append((name, got.dtype, got.shape, expected.shape))
        elif np.abs(got.astype(int) - expected.astype(int)).max() > tol:
            failures.append((name, int(np.abs(got.astype(int) - expected.astype(int)).max())))
    assert not failures, failures
    # arrays, by their dtype's range
    for name, arr, expected in (("uint16", g.astype(np.uint16) * 257, rgb3(g)), ("float", g / 255.0, rgb3(g)),
                                ("bool", g > 128, rgb3(np.where(g > 128, 255, 0))),
                                ("RGBA", np.dstack([u, alpha]), over_white(u, alpha))):
        np.testing.assert_array_equal(read_image(arr), expected, err_msg=name)


def test_animated_and_undecodable_images(tmp_path):
    """An animated image gives its first frame with one warning; a HEIF photo without pillow-heif,
    a truncated JPEG and a text file are one-line errors of the caller's class."""
    from emotivetalk_jax.data.portrait import PortraitError
    from emotivetalk_jax.data.portrait import read_image as read_portrait
    from emotivetalk_jax.validate import check_image_file

    frames = [np.full((16, 24, 3), v, np.uint8) for v in (10, 200, 90)]
    anim = tmp_path / "anim.png"
    Image.fromarray(frames[0]).save(anim, save_all=True, append_images=[Image.fromarray(f) for f in frames[1:]])
    with pytest.warns(InputWarning, match=r"portrait anim.png is animated \(3 frames\); using its first frame"):
        np.testing.assert_array_equal(read_portrait(anim), frames[0])
    gif = save(tmp_path / "anim.gif", Image.fromarray(frames[0]), save_all=True,
               append_images=[Image.fromarray(f) for f in frames[1:]])
    with pytest.warns(InputWarning, match="animated"):
        assert read_image(gif).shape == (16, 24, 3)
    heic = tmp_path / "IMG_0001.HEIC"
    heic.write_bytes(struct.pack(">I", 24) + b"ftypheic" + bytes(200))
    ok = tmp_path / "ok.jpg"
    save(ok, frames[1], quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(ok.read_bytes()[:200])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    cases = [(text, "cannot read portrait .*notes.png as an image"), (cut, "cannot read portrait .*cut.jpg")]
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        cases.append((heic, r"is a HEIF photo \(heic, an iPhone's default\); install pillow-heif"))
    for path, needle in cases:
        with pytest.raises(PortraitError, match=needle) as e:
            read_portrait(path)
        assert "\n" not in str(e.value)
    with pytest.MonkeyPatch.context() as mp:  # a 200-megapixel photo, scaled down to a cheap test
        mp.setattr(Image, "MAX_IMAGE_PIXELS", 100)
        for read in (read_portrait, lambda p: check_image_file(p, error=PortraitError)):  # generate checks first
            with pytest.raises(PortraitError, match="ok.jpg has more than 0 million pixels, over the reader's safety"):
                read(ok)


def test_phone_video_read_upright(tmp_path):
    """A video stored sideways with a rotation tag (what phones record) is probed with its
    displayed size and decoded upright, cropped and resized in that frame."""
    from emotivetalk_jax.data import video

    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 256, (4, 12, 16, 3), dtype=np.uint8), 4, 1).repeat(4, 2)  # 48 x 64 blocks
    up = video.write_mp4(tmp_path / "up.mp4", frames, audio=np.zeros(6400, np.float32))
    base = video.read_frames(up)
    for turn in (90, -90, 180):
        out = tmp_path / f"rot{turn}.mp4"
        r = subprocess.run([video.ffmpeg_exe(), "-v", "error", "-display_rotation", str(turn), "-i", str(up), "-c",
                            "copy", str(out)], capture_output=True)  # what a phone writes: pixels + a tag
        assert r.returncode == 0, r.stderr
        info = video.probe(out)
        k = turn // 90  # display_rotation turns counter-clockwise
        want = np.rot90(base, k, axes=(1, 2))
        assert (info.width, info.height) == (want.shape[2], want.shape[1]) and info.has_audio, (turn, info)
        np.testing.assert_array_equal(video.read_frames(out, info=info), want)
        crop = video.read_frames(out, crop=(0, 0, 32, 32), size=16, info=info)
        assert crop.shape == (len(base), 16, 16, 3)


def test_phone_and_editor_photos_prepare_as_shown(tmp_path):
    """What `generate` takes from a photo (`prepare_portrait`: face found, aligned, cropped to the
    model's size, with its boxes and paste-back map) is the same for a phone photo (EXIF 3, 6, 8)
    as for the picture a viewer shows, and the same for a 16-bit grey PNG of the demo portrait as
    for its 8-bit grey version. (The video itself, for orientation 6: tests/test_pipeline.py.)"""
    from emotivetalk_jax.data.portrait import prepare_portrait

    def same(a, b, tol=0):
        for field in ("image", "source", "lip_box", "face_box", "to_source"):
            x, y = (np.asarray(getattr(p, field), np.float64) for p in (a, b))
            assert x.shape == y.shape and np.abs(x - y).max() <= tol, field

    with Image.open(ASSETS / "portrait.png") as im:
        u = np.asarray(im.convert("RGB"))
    for o in (3, 6, 8):
        phone, shown = phone_photo(u, tmp_path / f"IMG_{o}.jpg", o)
        p = prepare_portrait(phone, 32)
        assert p.detail["faces"] == "detected"
        same(p, prepare_portrait(save(tmp_path / f"shown{o}.png", shown), 32))
    with Image.open(ASSETS / "demo_portrait.png") as im:
        g = grey(np.asarray(im.convert("RGB")))
    g16 = np.clip(g.astype(np.int64) * 257 + np.random.default_rng(1).integers(-128, 129, g.shape), 0, 65535)
    eight, sixteen = save(tmp_path / "demo8.png", g), png16(tmp_path / "demo16.png", g16)
    same(prepare_portrait(sixteen, 32), prepare_portrait(eight, 32), tol=1)
