"""Checks at the boundary: every user input (numbers, paths, audio, images) is checked once,
here, before any model loads.

The CLI and the Python pipeline call the same functions. A failure is an `InputError` (a
ValueError) or, where a caller passes `error=`, that domain's error (`AudioError`,
`PortraitError`, `GenerationError`, ...); either way its message is one line that says what
is wrong and what to do. Soft problems (all-silent audio, an emotion image without a face,
a checkpoint without a manifest) are `InputWarning`s; the CLI prints each as one
`emotivetalk: warning:` line.

Messages quote what the user typed through `quote` (cut to `QUOTE_CHARS`, the full length
said), and the CLI cuts any error line to `LINE_CHARS` (`shorten_line`): a pasted essay or a
deep path never floods the terminal. An output may never be one of the command's inputs
(`check_not_input`): the user's files are never overwritten.

Limits and why:
- seeds are 0 .. 2**32 - 1 (what `jax.random.key` and numpy accept on every platform);
- sampler steps are 1 .. 1000 (the EDM schedule has no more distinct noise levels to visit);
- audio lasts at most `MAX_AUDIO_SECONDS`: generation keeps every frame in memory and
  denoises the whole length at once (windows fused every step), so memory grows with length.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path

import numpy as np

MAX_SEED = 2**32 - 1
MAX_STEPS = 1000
MAX_AUDIO_SECONDS = 600.0
AUDIO_LIMIT_REASON = ("generation keeps every frame in memory and denoises the whole length at once; "
                      "split the speech into parts and join the videos")


class InputError(ValueError):
    """An input that cannot be used; the message says what is wrong and what to do, in one line."""


class NumberError(InputError):
    """A number out of its range."""


class PathError(InputError):
    """A path that is missing or of the wrong kind."""


class MissingPathError(PathError, FileNotFoundError):
    """The path does not exist."""


class NotAFileError(PathError, IsADirectoryError):
    """A folder where a file is expected."""


class NotAFolderError(PathError, NotADirectoryError):
    """A file where a folder is expected."""


class InputWarning(UserWarning):
    """A usable input that is probably not what the user meant."""


def warn(message: str) -> None:
    warnings.warn(message, InputWarning, stacklevel=2)


def _raise(error, fallback, message: str):
    raise (error or fallback)(message)


# ----------------------------------------------------------------------------- quoting user text

QUOTE_CHARS = 60
LINE_CHARS = 300


def quote(value, limit: int = QUOTE_CHARS, *, raw: bool = False) -> str:
    """`repr(value)` (`raw`: `str(value)`) for a message; a longer text is cut to `limit`
    characters and its length said."""
    if isinstance(value, str) and len(value) > limit and not raw:
        return f"{value[:limit]!r}... ({len(value):,} characters)"
    if isinstance(value, int) and value.bit_length() > 4 * limit:  # str() refuses over 4300 digits
        return f"an integer of about {value.bit_length() * math.log10(2):,.0f} digits"
    text = str(value) if raw else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _cut_run(m: re.Match) -> str:
    run = m.group(0)
    return f"{run[:40]}...{run[-20:]}"


def _cut_path(m: re.Match) -> str:
    run = m.group(0)
    return f"{run[:12]}...{run[-32:]}"


def shorten_line(text: str, limit: int = LINE_CHARS) -> str:
    """A message line of at most `limit` characters: runs of 80+ characters without a space
    (pasted text) keep their ends, then paths keep their start and their file name, then the
    line keeps its start and its end (where the advice is)."""
    if len(text) <= limit:
        return text
    text = re.sub(r"\S{80,}", _cut_run, text)
    if len(text) > limit:
        text = re.sub(r"/\S{47,}", _cut_path, text)
    if len(text) > limit:
        head = (limit - 5) // 2
        text = f"{text[:head]} ... {text[len(text) - (limit - 5 - head):]}"
    return text


# ----------------------------------------------------------------------------- numbers


def check_int(value, name: str, lo: int, hi: int | None = None, *, error=None) -> int:
    """`value` as an int in [lo, hi] (a float with an integral value passes)."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok and isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        value, ok = int(value), True
    if not ok:
        _raise(error, NumberError, f"{name} must be an integer, got {quote(value)}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        span = f"in {lo} .. {hi}" if hi is not None else f">= {lo}"
        _raise(error, NumberError, f"{name} must be {span}, got {quote(value, raw=True)}")
    return value


def check_float(value, name: str, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                error=None) -> float:
    """`value` as a finite float in [lo, hi] ((lo, hi] with `lo_open`)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not math.isfinite(v):
        _raise(error, NumberError, f"{name} must be a finite number, got {quote(value)}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        _raise(error, NumberError, f"{name} must be {'>' if lo_open else '>='} {lo}, got {quote(value, raw=True)}")
    if hi is not None and v > hi:
        _raise(error, NumberError, f"{name} must be <= {hi}, got {quote(value, raw=True)}")
    return v


def check_seed(seed, name: str = "--seed", *, error=None) -> int:
    return check_int(seed, name, 0, MAX_SEED, error=error)


def check_steps(steps, name: str = "--steps", *, error=None) -> int | None:
    """Sampler steps (None: the checkpoint's own)."""
    return None if steps is None else check_int(steps, name, 1, MAX_STEPS, error=error)


def check_variant(name: str, what: str = "--variant", *, error=None) -> str:
    """A known ETHD variant name (the message lists them)."""
    from emotivetalk_jax.models.ethd_variants import ETHD_VARIANTS

    if name not in ETHD_VARIANTS:
        _raise(error, InputError, f"{what} {quote(name)} is not a variant; choose one of {', '.join(ETHD_VARIANTS)}")
    return name


# ----------------------------------------------------------------------------- paths


def check_file(path, what: str, *, error=None, missing_error=None) -> Path:
    """An existing regular file (a folder is named as such)."""
    p = Path(path)
    if p.is_dir():
        _raise(error, NotAFileError, f"{what} {p} is a folder, not a file; pass the file itself")
    if not p.exists():
        _raise(missing_error or error, MissingPathError, f"{what} {p} does not exist; check the path")
    if not p.is_file():
        _raise(error, NotAFileError, f"{what} {p} is not a regular file; pass a file")
    return p


def check_folder(path, what: str, *, error=None, missing_error=None) -> Path:
    """An existing folder (a file is named as such)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        _raise(error, NotAFolderError, f"{what} {p} is a file, not a folder; pass a folder")
    if not p.exists():
        _raise(missing_error or error, MissingPathError, f"{what} {p} does not exist; check the path")
    return p


def _blocking_file(p: Path) -> Path | None:
    """The first existing non-folder among `p`'s ancestors, if any."""
    for a in reversed(p.absolute().parents):
        if a.exists() and not a.is_dir():
            return a
    return None


def missing_ancestors(path) -> list[Path]:
    """`path` and those of its ancestors that do not exist yet, outermost first."""
    p = Path(path).absolute()
    out = []
    for a in [p, *p.parents]:
        if a.exists():
            break
        out.append(a)
    return out[::-1]


def _writable_ancestor(p: Path, what: str, error) -> None:
    """Fail unless the nearest existing ancestor of `p` accepts new files."""
    base = next((a for a in p.absolute().parents if a.exists()), None)
    try:
        if base is None:
            raise OSError(2, "no existing parent folder")
        probe = base / f".emotivetalk-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        _raise(error, PathError, f"cannot write {what} {p} ({e.strerror or type(e).__name__}); "
                                 "choose a writable location")


def check_output_folder(path, what: str, *, error=None, empty: bool = False) -> Path:
    """A folder to write into: absent (it will be made) or a folder (`empty`: with nothing in it);
    never a file, nor under a file; its nearest existing ancestor writable."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        _raise(error, NotAFolderError, f"{what} {p} is a file, not a folder; pass a folder path")
    blocker = _blocking_file(p)
    if blocker is not None:
        _raise(error, NotAFolderError, f"{what} {p}: {blocker} is a file, not a folder; choose another path")
    if empty and p.is_dir() and any(p.iterdir()):
        _raise(error, PathError, f"{what} {p} exists and is not empty; choose a new folder")
    if not p.exists():
        _writable_ancestor(p, what, error)
    return p


def check_output_file(path, what: str, *, suffix: str | None = None, error=None) -> Path:
    """A file to (over)write: not a folder, not under a file, its folder writable. Makes nothing."""
    p = Path(path)
    if p.is_dir():
        _raise(error, NotAFileError, f"{what} {p} is a folder; pass a file path ending in {suffix or 'a file name'}")
    if suffix is not None and p.suffix.lower() != suffix:
        _raise(error, PathError, f"{what} {p} must end in {suffix}")
    blocker = _blocking_file(p.parent)
    if blocker is not None or (p.parent.exists() and not p.parent.is_dir()):
        _raise(error, NotAFolderError, f"{what} {p}: {blocker or p.parent} is a file, not a folder; "
                                       "choose another path")
    _writable_ancestor(p, what, error)
    return p


def _same_path(a: Path, b: Path) -> bool:
    """Whether `a` and `b` name one file or folder: symlinks, `./` and `..` spellings, hard
    links and case-insensitive file systems included."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_not_input(out, inputs: dict, what: str = "the output", *, error=None) -> None:
    """Refuse an output path that is one of `inputs` ({name: path or None}) or, as a folder,
    holds one: writing there would overwrite what the user gave. Runs before any work."""
    o = Path(out)
    for name, path in inputs.items():
        if path is None:
            continue
        p = Path(path)
        if _same_path(o, p):
            same = "itself" if str(o) == str(p) else f"{p} (through a link)" if o.is_symlink() or p.is_symlink() else p
            change = "change your folder" if p.is_dir() else "overwrite your file"
            _raise(error, PathError, f"{what} {o} is the {name} {same}; writing there would {change}: "
                                     "choose another path")
        if p.resolve().is_relative_to(o.resolve()):
            _raise(error, PathError, f"{what} {o} holds the {name} {p}; choose an output outside the inputs")


# ----------------------------------------------------------------------------- audio


class AudioError(InputError):
    """Audio that cannot be used; the message says what is wrong and what to do."""


class AudioNotFoundError(AudioError, FileNotFoundError):
    """The audio path does not exist."""


class AudioDecodeError(AudioError):
    """The file exists but holds no decodable audio track."""


class EmptyAudioError(AudioError):
    """The audio has no samples."""


class AudioTooShortError(AudioError):
    """The audio is shorter than one video frame."""


class AudioTooLongError(AudioError):
    """The audio is longer than generation's limit (`validate.MAX_AUDIO_SECONDS`, with the reason)."""


class NonFiniteAudioError(AudioError):
    """The audio holds NaN or Inf samples (a damaged float file)."""


def check_finite_audio(samples: np.ndarray, sr: int, what: str) -> None:
    """NaN / Inf samples make every frame black downstream: refuse them, naming where."""
    bad = ~np.isfinite(samples)
    if bad.any():
        first = int(np.argmax(bad.reshape(len(samples), -1).any(axis=1))) if samples.ndim > 1 else int(np.argmax(bad))
        raise NonFiniteAudioError(f"{what} has {int(bad.sum())} NaN / Inf samples (the first at {first / sr:.3f} s); "
                                  "the file is damaged: re-export it, e.g. as 16-bit PCM WAV")


def check_wave(wave, what: str = "audio", *, sr: int = 16000, fps: float = 25,
               max_seconds: float = MAX_AUDIO_SECONDS, path=None) -> np.ndarray:
    """A mono waveform at `sr` Hz, checked: finite, at least one video frame, at most
    `max_seconds`; all-silent passes with a warning. AudioError family otherwise. `path`:
    the file it came from, named in the errors."""
    quiet_what = what
    what = f"{what} {path}" if path is not None else what
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise AudioError(f"{what} waveform has shape {wave.shape}; pass a mono (S,) array at {sr} Hz")
    if wave.size == 0:
        raise EmptyAudioError(f"{what} has no samples; pass speech")
    check_finite_audio(wave, sr, what)
    duration = wave.size / sr
    if duration < 1 / fps:
        raise AudioTooShortError(f"{what} lasts {duration * 1000:.1f} ms, shorter than one video frame "
                                 f"({1000 / fps:.0f} ms at {fps:g} fps); pass a longer clip")
    if duration > max_seconds:
        raise AudioTooLongError(f"{what} lasts {duration:.1f} s, over the {max_seconds:g} s limit: "
                                f"{AUDIO_LIMIT_REASON}")
    if not np.any(wave):
        warn(f"the {quiet_what} is silent (every sample is zero); the video will show a closed mouth")
    return wave.astype(np.float32, copy=False)


SPEECH_DBFS = -50.0  # an emotion is read from audio whose loudest 20 ms is at least this loud


def check_speech(wave: np.ndarray, what: str = "emotion audio", *, sr: int = 16000, error=None) -> np.ndarray:
    """Audio an emotion is read from must hold speech: its loudest 20 ms at `SPEECH_DBFS` or more
    (silence, or a noise floor, has no emotion to read). `wave`: a checked waveform (`check_wave`)."""
    wave = np.asarray(wave, np.float64)
    frame = max(sr // 50, 1)
    rows = wave[: len(wave) // frame * frame].reshape(-1, frame) if len(wave) >= frame else wave[None]
    rms = float(np.sqrt(np.mean(np.square(rows), axis=-1)).max()) if wave.size else 0.0
    level = 20 * math.log10(max(rms, 1e-10))
    if level < SPEECH_DBFS:
        _raise(error, AudioError, f"{what} holds no speech (its loudest 20 ms is at {level:.0f} dBFS, under "
                                  f"{SPEECH_DBFS:.0f} dBFS): an emotion cannot be read from silence; pass a "
                                  "recording of the voice")
    return wave


# ----------------------------------------------------------------------------- images


def check_image_file(path, what: str = "portrait", *, error=None) -> Path:
    """A file PIL can decode as an image (a HEIF photo without pillow-heif named as such)."""
    p = check_file(path, what, error=error)
    check_heif(p, what, error=error)
    try:
        from PIL import Image

        with Image.open(p) as im:
            im.verify()
    except Exception as e:  # noqa: BLE001 - any decoder failure is one clear error
        _raise(error, InputError, unreadable_image(e, what, p))
    return p


def unreadable_image(e: Exception, what: str, path) -> str:
    """The one-line message for an image PIL could not open or decode."""
    from PIL import Image

    if isinstance(e, Image.DecompressionBombError):
        return (f"{what} {path} has more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} million pixels, over the "
                "reader's safety limit; scale it down (a portrait needs a few megapixels at most)")
    return f"cannot read {what} {path} as an image ({type(e).__name__}); pass a PNG or JPEG photo"


_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")  # AVIF: Pillow reads it


def check_heif(path, what: str = "portrait", *, error=None) -> None:
    """A HEIF photo (an iPhone's default) is readable when pillow-heif is installed (its opener
    is registered here); without it, one line says how to read it."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return
    if head[4:8] != b"ftyp" or head[8:12] not in _HEIF_BRANDS:
        return
    try:
        import pillow_heif
    except ImportError:
        _raise(error, InputError, f"{what} {path} is a HEIF photo ({head[8:12].decode()}, an iPhone's default); "
                                  "install pillow-heif (pip install pillow-heif) or export it as JPEG")
    pillow_heif.register_heif_opener()


def parse_face_box(text: str | None, name: str = "--face-box", *, error=None) -> list[float] | None:
    """"X0,Y0,X1,Y1" -> four finite numbers with x0 < x1, y0 < y1 (the image bounds are checked
    when the image is read)."""
    if text is None:
        return None
    try:
        box = [float(v) for v in str(text).split(",")]
    except ValueError:
        box = []
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        _raise(error, InputError, f"{name} must be four numbers X0,Y0,X1,Y1, got {quote(text)}")
    if not (box[0] < box[2] and box[1] < box[3]):
        _raise(error, InputError, f"{name} {quote(text)} is empty: need X0 < X1 and Y0 < Y1 (pixels, top-left origin)")
    return box


# ----------------------------------------------------------------------------- command lines


def check_command(args) -> None:
    """The boundary checks of a parsed `emotivetalk` command line whose command does not check
    its own (`generate`, `prepare`, `synth` and `train` do, from the Python API too)."""
    cmd = args.command
    if getattr(args, "seed", None) is not None and cmd != "generate":
        check_seed(args.seed)
    if cmd == "convert":
        if args.what == "export":
            check_folder(args.ckpt, "checkpoint")
        elif not Path(args.src).exists():
            raise MissingPathError(f"source {args.src} does not exist; pass the model folder")
        check_output_folder(args.out, "output folder")
        check_not_input(args.out, {"checkpoint": args.ckpt} if args.what == "export" else {"source": args.src},
                        "output folder")
    elif cmd in ("random-svd", "random-bundle"):
        check_output_folder(args.out, "output folder", empty=True)
        if cmd == "random-bundle":
            check_variant(args.variant)
            if args.resolution is not None:
                check_int(args.resolution, "--resolution", 16, 4096)
    elif cmd == "forward":
        check_folder(args.ckpt, "checkpoint")
        if args.frames is not None:
            check_int(args.frames, "--frames", 1, 10_000)
    elif cmd == "info":
        check_variant(args.variant)
    elif cmd == "bench-synthetic":
        if args.checkpoint is not None:
            check_folder(args.checkpoint, "checkpoint")
        check_int(args.clips, "--clips", 1, 100_000)
        if args.frames is not None:
            check_int(args.frames, "--frames", 1, int(MAX_AUDIO_SECONDS * 25))
        check_steps(args.steps)
        check_seed(args.data_seed, "--data-seed")
        if args.head_motion is not None:
            check_float(args.head_motion, "--head-motion", 0.0, 10.0)
        if getattr(args, "motion", None) is not None:
            check_float(args.motion, "--motion", 0.0, 2.0)  # data.pose.MAX_LEVEL; the bundle's knob is checked next
    elif cmd == "export-bundle":
        check_folder(args.ethd_workdir, "ethd workdir")
        check_not_input(args.out, {"ethd workdir": args.ethd_workdir, "--codebook": args.codebook, "--vae": args.vae,
                                   "--vaid": args.vaid}, "output folder")
        check_output_folder(args.out, "output folder", empty=True)
        for name in ("codebook", "vae"):
            if getattr(args, name):
                check_folder(getattr(args, name), f"--{name}")
        if args.resolution is not None:
            check_int(args.resolution, "--resolution", 16, 4096)
    elif cmd == "codebook":
        check_folder(args.images_dir, "images folder")
        check_folder(args.checkpoint, "--checkpoint")
        check_output_folder(args.out, "output folder")
        check_not_input(args.out, {"images folder": args.images_dir, "--checkpoint": args.checkpoint}, "output folder")


__all__ = [
    "InputError", "NumberError", "PathError", "MissingPathError", "NotAFileError", "NotAFolderError",
    "InputWarning", "AudioError", "AudioNotFoundError", "AudioDecodeError", "EmptyAudioError",
    "AudioTooShortError", "AudioTooLongError", "NonFiniteAudioError", "MAX_SEED", "MAX_STEPS", "MAX_AUDIO_SECONDS", "check_int", "check_float", "check_seed",
    "check_steps", "check_variant", "check_file", "check_folder", "check_output_folder", "check_output_file",
    "missing_ancestors", "check_not_input", "quote", "shorten_line", "QUOTE_CHARS", "LINE_CHARS",
    "check_finite_audio", "check_wave", "check_speech", "SPEECH_DBFS", "check_image_file", "check_heif",
    "unreadable_image",
    "parse_face_box", "warn", "check_command",
]
