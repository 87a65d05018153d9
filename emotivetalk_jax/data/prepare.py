"""`emotivetalk prepare VIDEO_DIR OUT_DIR`: real talking-face videos -> a tfds array_record dataset.

For each video (HDTF / MEAD layouts: any tree of .mp4/.mov/.avi/.mkv/.webm with speech):

1. probe it with the bundled ffmpeg; unreadable files are skipped with the reason;
2. extract 16 kHz mono audio (skipped: "no audio");
3. find the face on a few frames (dlib, `face.py`); if dlib finds none and a sidecar
   `NAME.json` with "landmarks" / "portrait_landmarks" sits next to the video (as
   `emotivetalk synth` writes), use those; else skipped: "no face";
4. decode at 25 fps, cropped to a square around the face (`crop_scale` x the face box)
   and resized to `size` inside ffmpeg; fewer than `min_frames` frames: "too short";
5. 68 landmarks per frame (dlib, re-detecting every `detect_every` frames; or the
   sidecar's), lip / face boxes per frame, reference-frame masks, optional log-mel
   features; frames stored as JPEG.

Each finished clip is cached atomically under OUT_DIR/.work/ (a rerun reuses it after
loading it back: a damaged entry is rebuilt and reported; a crash never leaves half-written
output, and temporary files left by a killed run are removed by the next), files run in
parallel worker processes, and a bad file never stops the run. Then the clips are split
90/10 by clip (or by speaker), with no overlap, and written as the tfds dataset
OUT_DIR/emotivetalk_prepared/1.0.0 (array_record, built aside and renamed into place; read
it with `open_prepared`, no tensorflow needed). Every skipped clip and its reason is listed
in OUT_DIR/prepare_report.json and returned; skip and rebuild lines go to stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import sys
import traceback
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from emotivetalk_jax import validate
from emotivetalk_jax.data import face as facelib
from emotivetalk_jax.data import video as vid
from emotivetalk_jax.data.pose import pose_from_landmarks
from emotivetalk_jax.data.synthetic_speech import EMOTIONS

VIDEO_EXTS = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".flv", ".mpg", ".mpeg"}
DATASET_NAME = "emotivetalk_prepared"
DATASET_VERSION = "1.0.0"
_MEAD_EMOTIONS = {"fear": "fearful", "disgust": "disgusted", "surprise": "surprised", "happiness": "happy",
                  "anger": "angry", "sadness": "sad"}
N_MELS = 80
# What a cached clip must hold to be reused (the dataset's features).
_RECORD_KEYS = {"id", "source", "speaker", "landmark_source", "emotion", "intensity_level", "num_frames", "frames",
                "audio", "landmarks", "lip_boxes", "face_boxes", "lip_mask", "face_mask", "crop", "audio_features"}


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    size: int = 256
    fps: int = 25
    sample_rate: int = 16000
    min_frames: int = 25
    max_frames: int | None = None
    crop_scale: float = 1.8
    detect_every: int = 5
    test_fraction: float = 0.1
    split_by: str = "clip"  # or "speaker" (first path component)
    audio_features: str | None = None  # None or "mel" (80-bin log-mel, 100 Hz)
    jpeg_quality: int = 95

    def __post_init__(self):
        validate.check_int(self.size, "--size", 16, 4096)
        if self.size % 2:
            raise validate.NumberError(f"--size must be an even number >= 16, got {self.size}")
        validate.check_int(self.min_frames, "--min-frames", 1)
        if self.max_frames is not None:
            validate.check_int(self.max_frames, "--max-frames", self.min_frames)
        validate.check_float(self.crop_scale, "--crop-scale", 1.0, 10.0)
        validate.check_int(self.detect_every, "detect_every", 1)
        if self.split_by not in ("clip", "speaker"):
            raise ValueError(f"--split-by must be 'clip' or 'speaker', got {self.split_by!r}")
        if self.audio_features not in (None, "mel"):
            raise ValueError(f"--audio-features must be 'mel' or omitted, got {self.audio_features!r}")
        if not (isinstance(self.test_fraction, (int, float)) and 0.0 < self.test_fraction < 1.0):
            raise ValueError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")


class SkipClip(Exception):
    """A clip that cannot be used; str(e) is the reason written to the report."""


def clip_id(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    return "__".join(rel.parts)


def path_labels(path: Path, root: Path) -> dict:
    """Speaker, emotion id (-1 unknown) and MEAD intensity level from the path."""
    parts = [p.lower() for p in path.relative_to(root).parts]
    emotion, level = -1, -1
    for p in parts[:-1] + [Path(parts[-1]).stem]:
        name = _MEAD_EMOTIONS.get(p, p)
        if name in EMOTIONS:
            emotion = EMOTIONS.index(name)
        if p.startswith("level_") and p[6:].isdigit():
            level = int(p[6:])
    speaker = path.relative_to(root).parts[0] if len(path.relative_to(root).parts) > 1 else path.stem
    return {"speaker": speaker, "emotion": emotion, "intensity_level": level}


def _sidecar(path: Path) -> dict | None:
    j = path.with_suffix(".json")
    if not j.is_file():
        return None
    try:
        gt = json.loads(j.read_text())
    except (OSError, ValueError):
        return None
    return gt if isinstance(gt, dict) and ("landmarks" in gt or "portrait_landmarks" in gt) else None


def _detect_box(path: Path, info: vid.VideoInfo, det: facelib.DlibDetector) -> np.ndarray | None:
    boxes = []
    for t in (0.0, info.duration / 3, 2 * info.duration / 3):
        fr = vid.read_frames(path, max_frames=1, start=t, info=info)
        if len(fr) == 0:
            continue
        faces = det(fr[0])
        if faces:
            f = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
            boxes.append(f.face_box)
    return np.median(np.stack(boxes), 0) if boxes else None


def log_mel(audio: np.ndarray, sr: int = 16000) -> np.ndarray:
    """(T, 80) log-mel at 100 Hz (hop 10 ms, window 25 ms)."""
    import librosa

    m = librosa.feature.melspectrogram(y=audio, sr=sr, n_fft=400, hop_length=sr // 100, n_mels=N_MELS, power=2.0)
    return np.log(m + 1e-6).T.astype(np.float32)


def process_clip(path: Path, root: Path, cfg: PrepareConfig) -> dict:
    """One video -> a dict of arrays (raises SkipClip with the reason)."""
    try:
        info = vid.probe(path)
    except vid.VideoError as e:
        raise SkipClip(f"unreadable: {e}") from None
    if not info.has_audio:
        raise SkipClip("no audio: the file has no audio stream")
    try:
        audio = vid.read_audio(path, cfg.sample_rate, info=info)
    except vid.VideoError as e:
        raise SkipClip(f"no audio: {e}") from None
    spf = cfg.sample_rate // cfg.fps
    if len(audio) < cfg.min_frames * spf:
        raise SkipClip(f"too short: {len(audio) / cfg.sample_rate:.2f} s of audio < {cfg.min_frames} frames")
    # HOG finds faces down to ~80 px: upsample small videos once, never HD ones (slow)
    try:
        box = _detect_box(path, info, facelib.DlibDetector(upsample=1 if min(info.width, info.height) < 400 else 0))
    except vid.VideoError as e:
        raise SkipClip(f"unreadable: {e}") from None
    side = _sidecar(path)
    if box is None and side is None:
        raise SkipClip("no face: dlib found no face on the sampled frames")
    if box is None:
        key = "landmarks" if "landmarks" in side else "portrait_landmarks"
        lm0 = np.asarray(side[key], np.float32)
        lm0 = lm0[0] if lm0.ndim == 3 else lm0
        box = facelib.face_box(lm0)
    crop = facelib.crop_box(box, (info.width, info.height), cfg.crop_scale)
    try:
        frames = vid.read_frames(path, cfg.fps, crop=crop, size=cfg.size, max_frames=cfg.max_frames, info=info)
    except vid.VideoError as e:
        raise SkipClip(f"unreadable: {e}") from None
    n = min(len(frames), len(audio) // spf)
    if n < cfg.min_frames:
        raise SkipClip(f"too short: {n} frames < {cfg.min_frames}")
    frames = frames[:n]
    audio = audio[: n * spf]
    scale = cfg.size / crop[2]
    lms = facelib.track_landmarks(frames, facelib.DlibDetector(upsample=1 if cfg.size < 400 else 0), cfg.detect_every)
    source = "dlib"
    if lms is None:
        if side is None or "landmarks" not in side:
            raise SkipClip("no face: dlib lost the face in the cropped frames")
        lms = (np.asarray(side["landmarks"], np.float32)[:n] - np.array(crop[:2], np.float32)) * scale
        if len(lms) < n:
            raise SkipClip(f"no face: sidecar has landmarks for {len(lms)} of {n} frames")
        source = "sidecar"
    lip = np.stack([facelib.clip_box(facelib.lip_box(l), cfg.size) for l in lms])
    fbox = np.stack([facelib.clip_box(facelib.face_box(l), cfg.size) for l in lms])
    labels = path_labels(path, root)
    if side is not None and "emotion" in side and side["emotion"] in EMOTIONS:
        labels["emotion"] = EMOTIONS.index(side["emotion"])
    out = {
        "id": clip_id(path, root), "source": str(path.relative_to(root)), "landmark_source": source,
        **labels,
        "frames": [vid.encode_jpeg(f, cfg.jpeg_quality) for f in frames],
        "audio": audio.astype(np.float32),
        "landmarks": lms.astype(np.float32),
        "lip_boxes": lip.astype(np.float32), "face_boxes": fbox.astype(np.float32),
        "lip_mask": facelib.box_mask(lip[0], cfg.size, cfg.size)[..., 0].astype(np.uint8),
        "face_mask": facelib.box_mask(fbox[0], cfg.size, cfg.size)[..., 0].astype(np.uint8),
        "crop": np.asarray(crop, np.int32), "num_frames": n,
        "pose": pose_from_landmarks(lms, lms[0], cfg.size),
    }
    out["audio_features"] = log_mel(audio, cfg.sample_rate) if cfg.audio_features == "mel" else np.zeros((0, N_MELS), np.float32)
    return out


def _save_record(path: Path, rec: dict) -> None:
    """One prepared clip as .npz (no pickle: the cache folder may be shared or moved)."""
    arrays = {}
    for k, v in rec.items():
        if k == "frames":  # JPEG byte strings of different lengths: one buffer + offsets
            arrays["frames.offsets"] = np.cumsum([0] + [len(b) for b in v]).astype(np.int64)
            arrays["frames.data"] = np.frombuffer(b"".join(v), np.uint8)
        else:
            arrays[k] = np.asarray(v)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _load_record(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        rec = {k: z[k] for k in z.files if not k.startswith("frames.")}
        data, offsets = z["frames.data"].tobytes(), z["frames.offsets"]
    rec["frames"] = [data[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    if "pose" not in rec and "landmarks" in rec and "lip_mask" in rec:  # cached before poses were stored
        lms = rec["landmarks"]
        rec["pose"] = pose_from_landmarks(lms, lms[0], rec["lip_mask"].shape[0]) if len(lms) else np.zeros((0, 4), np.float32)
    return {k: (v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v) for k, v in rec.items()}


def _work(args) -> tuple[str, str | None]:
    """Worker: process one file into the cache. Returns (id, skip reason or None)."""
    path, root, cfg, work = args
    cid = clip_id(path, root)
    dst = work / f"{cid}.npz"
    try:
        rec = process_clip(path, root, cfg)
    except SkipClip as e:
        return cid, str(e)
    except Exception as e:  # a bad file never stops the run
        last = traceback.format_exception_only(type(e), e)[-1].strip()
        return cid, f"error: {last[:200]}"
    tmp = work / f".{cid}.{os.getpid()}.tmp"
    try:
        _save_record(tmp, rec)
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    return cid, None


def check_record(path: Path) -> str | None:
    """Why a cached clip cannot be reused (None if it loads whole); reading it back checks
    every member's CRC."""
    try:
        rec = _load_record(path)
    except Exception as e:  # noqa: BLE001 - any failure to read back means rebuild
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'unreadable'}"
    missing = sorted(_RECORD_KEYS - set(rec))
    if missing:
        return f"lacks {missing[0]}"
    if len(rec["frames"]) != int(rec["num_frames"]):
        return f"{len(rec['frames'])} frames, its header says {int(rec['num_frames'])}"
    return None


def find_videos(video_dir: Path) -> list[Path]:
    return sorted(p for p in video_dir.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTS
                  and not p.name.startswith("."))


def split_ids(ids: list[str], speakers: dict[str, str], cfg: PrepareConfig, seed: int = 0) -> dict[str, list[str]]:
    """Deterministic 90/10 split by clip (or speaker); groups never straddle splits."""
    groups = sorted({(speakers[i] if cfg.split_by == "speaker" else i) for i in ids},
                    key=lambda g: hashlib.sha1(f"{seed}:{g}".encode()).hexdigest())
    n_test = max(1, int(round(cfg.test_fraction * len(groups)))) if len(groups) > 1 else 0
    test = set(groups[:n_test])
    key = (lambda i: speakers[i]) if cfg.split_by == "speaker" else (lambda i: i)
    return {"train": sorted(i for i in ids if key(i) not in test), "test": sorted(i for i in ids if key(i) in test)}


def _features(cfg: PrepareConfig):
    import tensorflow_datasets as tfds

    T = tfds.features.Tensor
    return tfds.features.FeaturesDict({
        "id": tfds.features.Text(), "source": tfds.features.Text(), "speaker": tfds.features.Text(),
        "landmark_source": tfds.features.Text(),
        "emotion": np.int32, "intensity_level": np.int32, "num_frames": np.int32,
        "frames": tfds.features.Sequence(T(shape=(), dtype=np.object_)),
        "audio": T(shape=(None,), dtype=np.float32),
        "landmarks": T(shape=(None, 68, 2), dtype=np.float32),
        "lip_boxes": T(shape=(None, 4), dtype=np.float32), "face_boxes": T(shape=(None, 4), dtype=np.float32),
        "lip_mask": T(shape=(cfg.size, cfg.size), dtype=np.uint8),
        "face_mask": T(shape=(cfg.size, cfg.size), dtype=np.uint8),
        "crop": T(shape=(4,), dtype=np.int32),
        "pose": T(shape=(None, 4), dtype=np.float32),
        "audio_features": T(shape=(None, N_MELS), dtype=np.float32),
    })


def _build_tfds(out: Path, work: Path, splits: dict[str, list[str]], cfg: PrepareConfig) -> Path:
    import tensorflow_datasets as tfds

    class EmotivetalkPrepared(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(DATASET_VERSION)
        url_infos = None  # nothing to download; also avoids tfds' code-path lookup

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=_features(cfg),
                                         description="Talking-face clips prepared by `emotivetalk prepare`.",
                                         metadata=tfds.core.MetadataDict(config=dataclasses.asdict(cfg)))

        def _split_generators(self, dl_manager):
            return {s: self._generate_examples(ids) for s, ids in splits.items() if ids}

        def _generate_examples(self, ids):
            for cid in ids:
                yield cid, _load_record(work / f"{cid}.npz")

    tfds.disable_progress_bar()
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    tmp = out / ".build"
    shutil.rmtree(tmp, ignore_errors=True)
    final = out / DATASET_NAME / DATASET_VERSION
    old = final.with_name(f".{DATASET_VERSION}.old")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # tfds prints "Downloading and preparing ..."
            EmotivetalkPrepared(data_dir=str(tmp), file_format="array_record").download_and_prepare()
        built = tmp / "emotivetalk_prepared" / DATASET_VERSION
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            final.replace(old)
        built.replace(final)
        shutil.rmtree(old, ignore_errors=True)
    finally:  # whatever happened: the previous dataset back in place, no build folder left
        if old.exists() and not final.exists():
            old.replace(final)
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _remove_temporaries(out: Path, work: Path) -> None:
    """Temporary files and folders a killed or interrupted run left behind."""
    for p in work.glob(".*.tmp"):
        p.unlink(missing_ok=True)
    shutil.rmtree(out / ".build", ignore_errors=True)
    (out / "prepare_report.tmp").unlink(missing_ok=True)


def _read_json(path: Path) -> dict | None:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _stop_pool(ex: ProcessPoolExecutor) -> None:
    """Stop the workers now (an interrupt or an error in the parent): cancel what has not
    started, terminate what runs."""
    procs = list((getattr(ex, "_processes", None) or {}).values())
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(timeout=5)
    ex.shutdown(wait=True, cancel_futures=True)  # the workers are gone: this only releases the queues


def prepare_main(video_dir: str | os.PathLike, out_dir: str | os.PathLike, config: PrepareConfig | None = None,
                 workers: int = 2, progress: bool = True) -> dict:
    """Prepare every video under `video_dir` into `out_dir`; returns the report dict."""
    from tqdm import tqdm

    from emotivetalk_jax.interrupts import ignore_sigint

    workers = validate.check_int(workers, "--workers", 1, 256)

    cfg = config or PrepareConfig()
    root = validate.check_folder(video_dir, "video folder")
    out = validate.check_output_folder(out_dir, "output folder")
    validate.check_not_input(out, {"video folder": root}, "output folder")
    videos = find_videos(root)
    if not videos:
        raise ValueError(f"no video files ({', '.join(sorted(VIDEO_EXTS))}) under {root}")
    ids = [clip_id(p, root) for p in videos]
    if len(set(ids)) != len(ids):
        raise ValueError("two videos map to the same clip id (same path without extension)")
    work = out / ".work"
    cfg_file = work / "config.json"
    if cfg_file.exists():
        old_cfg = _read_json(cfg_file)
        if old_cfg is None:
            raise ValueError(f"the cache settings {cfg_file} are damaged; delete {work} (or use a new OUT_DIR)")
        if old_cfg != dataclasses.asdict(cfg):
            raise ValueError(f"{out} was prepared with different settings; use a new OUT_DIR or delete {work}")
    work.mkdir(parents=True, exist_ok=True)
    _remove_temporaries(out, work)
    cfg_file.write_text(json.dumps(dataclasses.asdict(cfg)))
    skipped: dict[str, str] = {}
    rebuilt: dict[str, str] = {}
    cached = {i for i in ids if (work / f"{i}.npz").exists()}
    for i in sorted(cached):
        reason = check_record(work / f"{i}.npz")
        if reason is not None:
            rebuilt[i] = reason
            (work / f"{i}.npz").unlink(missing_ok=True)
            print(f"prepare: cached clip {i} is damaged ({reason}); rebuilding it", file=sys.stderr)
    done = cached - set(rebuilt)
    todo = [(p, root, cfg, work) for i, p in zip(ids, videos) if i not in done]
    bar = tqdm(total=len(videos), initial=len(done), desc="prepare", unit="clip", disable=not progress)
    try:
        if todo:
            ex = None
            if workers <= 1:
                results = map(_work, todo)
            else:
                # spawn, not fork: a forked child of a process running JAX threads can deadlock.
                ex = ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                                         initializer=ignore_sigint)
                futs = {ex.submit(_work, t): t for t in todo}
                results = (_result(f, futs[f], root) for f in as_completed(futs))
            try:
                for cid, reason in results:
                    if reason is not None:
                        skipped[cid] = reason
                        bar.write(f"skipped {cid}: {reason}", file=sys.stderr)
                    bar.update()
            except BaseException:
                if ex is not None:
                    _stop_pool(ex)
                raise
            if ex is not None:
                ex.shutdown()
    finally:
        bar.close()
        _remove_temporaries(out, work)
    finished = sorted(i for i in ids if (work / f"{i}.npz").exists())
    if not finished:
        raise ValueError(f"no clip could be prepared ({len(skipped)} skipped); see the reasons above")
    speakers = {}
    for i, p in zip(ids, videos):
        if i in finished:
            speakers[i] = path_labels(p, root)["speaker"]
    splits = split_ids(finished, speakers, cfg)
    report_file = out / "prepare_report.json"
    prev = _read_json(report_file) or {}
    final = out / DATASET_NAME / DATASET_VERSION
    if rebuilt or prev.get("splits") != splits or not final.exists():
        _build_tfds(out, work, splits, cfg)
    report = {"dataset": str(final), "prepared": finished, "newly_prepared": sorted(set(finished) - done),
              "reused": sorted(done), "rebuilt": rebuilt, "skipped": skipped, "splits": splits,
              "counts": {s: len(v) for s, v in splits.items()}}
    tmp = report_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(report_file)
    return report


def _result(fut, job, root) -> tuple[str, str | None]:
    try:
        return fut.result()
    except Exception as e:  # worker died (e.g. killed): report, don't stop
        return clip_id(job[0], root), f"error: worker failed ({type(e).__name__}: {e})"


def open_prepared(out_dir: str | os.PathLike, split: str = "train"):
    """Random-access source (len, [i] -> dict) over a prepared split; no tensorflow needed."""
    import tensorflow_datasets as tfds

    path = Path(out_dir)
    if (path / DATASET_NAME / DATASET_VERSION).is_dir():
        path = path / DATASET_NAME / DATASET_VERSION
    if not (path / "dataset_info.json").is_file():
        raise FileNotFoundError(f"{out_dir} holds no prepared dataset (run `emotivetalk prepare` first)")
    return tfds.builder_from_directory(str(path)).as_data_source(split=split)
