"""`emotivetalk evaluate`: the paper's metrics (Tables 1-3) over two folders of videos.

Shape legend: T frames, H, W spatial, D feature width.

    FID     Fréchet distance of InceptionV3 pool features of every frame (pytorch-fid)
    FVD     Fréchet distance of I3D logits of each clip's first --fvd-frames frames
            (128 for HDTF, 72 for MEAD, as the paper states)
    Sync-C / Sync-D
            SyncNet confidence / minimum distance of each generated video against its own
            audio track, averaged over videos (syncnet_python, offset search over +-15 frames)
    E-FID   Fréchet distance of the 64 expression coefficients Deep3DFaceRecon's ResNet-50
            regresses from every frame's face

FID, FVD and E-FID compare the generated folder with the reference folder; Sync-C / D
score the generated videos. Each metric runs only with its network's weights (safetensors
converted from the official checkpoint; README, "Evaluation"); a metric whose weights are
not given or missing is skipped with a line saying so. Faces for SyncNet and E-FID are
found by the project's face module on each video's first frame (`--crop none`: the videos
are already face crops). Statistics stream over videos (nothing but features is kept).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from emotivetalk_jax.eval import i3d, syncnet
from emotivetalk_jax.eval.frechet import FeatureStats, stats_distance
from emotivetalk_jax.models.metrics import face3d, inception
from emotivetalk_jax.models.metrics.layers import resize_bilinear

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
# metric -> (command-line flag, network file, what the user converts it from)
WEIGHTS = {
    "fid": ("--fid-weights", "fid", "pytorch-fid pt_inception-2015-12-05-6726825d.pth"),
    "fvd": ("--fvd-weights", "fvd", "i3d_pretrained_400.pt"),
    "sync": ("--syncnet-weights", "sync", "syncnet_v2.model"),
    "efid": ("--face3d-weights", "face3d", "Deep3DFaceRecon epoch_20.pth"),
}
SYNC_CROP_SCALE = 0.4  # syncnet_python run_pipeline's --crop_scale
FACE3D_CROP_SCALE = 1.5


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("generated", help="folder of generated videos (mp4 with the driving audio muxed in)")
    p.add_argument("reference", help="folder of ground-truth videos")
    for flag, _, source in WEIGHTS.values():
        p.add_argument(flag, metavar="FILE", help=f"safetensors re-saved from {source}")
    p.add_argument("--per-video", action="store_true", help="add one row per generated video")
    p.add_argument("--fvd-frames", type=int, default=128, help="frames per clip for FVD (HDTF 128, MEAD 72)")
    p.add_argument("--crop", choices=("face", "none"), default="face",
                   help="face: detect the face on each video's first frame (SyncNet, E-FID); none: videos are face crops")
    p.add_argument("--batch", type=int, default=8, help="frames (or windows) per network call")
    p.add_argument("--vshift", type=int, default=syncnet.VSHIFT, help="SyncNet offset search range in frames")


def _say(line: str) -> None:
    print(f"emotivetalk: {line}", file=sys.stderr)


def _videos(folder: str, what: str) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{what} folder {root} does not exist or is not a folder")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise ValueError(f"{what} folder {root} holds no videos ({', '.join(VIDEO_SUFFIXES)})")
    return files


# ----------------------------------------------------------------------------- compiled forwards


@nnx.jit
def _fid_forward(model, frames):
    return model(frames.astype(jnp.float32) / 255.0)


@nnx.jit
def _i3d_forward(model, video):
    return model(video)


@nnx.jit
def _lip_forward(model, windows):
    return model.forward_lip(windows)


@nnx.jit
def _aud_forward(model, mfcc):
    return model.forward_aud(mfcc)


@nnx.jit
def _face3d_forward(model, faces):
    return model(faces)


def batched(fn: Callable, model: nnx.Module, x: np.ndarray, batch: int) -> np.ndarray:
    """fn(model, chunk) over x in chunks of exactly `batch` rows (the last one padded), one compile."""
    out = []
    for i in range(0, len(x), batch):
        chunk = np.asarray(x[i:i + batch])
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(fn(model, jnp.asarray(chunk)))[:n])
    return np.concatenate(out)


def fid_features(model, frames: np.ndarray, batch: int = 8) -> np.ndarray:
    """uint8 RGB frames (T, H, W, 3) -> InceptionV3 pool features (T, 2048)."""
    return batched(_fid_forward, model, frames, batch)


def fvd_features(model, frames: np.ndarray, num_frames: int) -> np.ndarray:
    """uint8 RGB frames (T, H, W, 3) -> I3D logits (1, 400) of the first `num_frames` frames."""
    return np.asarray(_i3d_forward(model, jnp.asarray(i3d.preprocess(frames, num_frames))[None]))


def _resize(frames: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([np.asarray(resize_bilinear(jnp.asarray(frames[i:i + 16], jnp.float32), (size, size)))
                           for i in range(0, len(frames), 16)])


def face3d_coefficients(model, faces: np.ndarray, batch: int = 8) -> np.ndarray:
    """uint8 RGB face crops (T, h, w, 3) -> the 257 Basel-model coefficients (T, 257)."""
    return batched(_face3d_forward, model, (_resize(faces, face3d.SIZE) / 255.0).astype(np.float32), batch)


def sync_scores(model, faces: np.ndarray, audio: np.ndarray, *, batch: int = 8, vshift: int = syncnet.VSHIFT,
                what: str = "video") -> syncnet.SyncResult:
    """Sync of uint8 RGB face crops (T, h, w, 3) at 25 fps against 16 kHz audio in [-1, 1]."""
    count = syncnet.sync_windows(len(faces), len(audio))
    if count < 1:
        raise ValueError(f"{what}: SyncNet needs at least {syncnet.WINDOW + 1} frames with audio under them; "
                         f"got {len(faces)} frames and {len(audio) / 16000:.2f} s of audio")
    bgr = _resize(faces[:count + syncnet.WINDOW - 1], syncnet.SIZE)[..., ::-1]  # cv2 reads BGR, 0..255
    lip = np.concatenate([batched(_lip_forward, model, syncnet.frame_windows(bgr, i, min(i + batch, count)), batch)
                          for i in range(0, count, batch)])
    cep = syncnet.mfcc(np.round(np.asarray(audio, np.float64) * 32768.0))  # the int16 values wavfile reads
    aud = batched(_aud_forward, model, syncnet.mfcc_windows(cep, count), batch)
    return syncnet.offset_search(lip, aud, vshift)


# ----------------------------------------------------------------------------- faces


def _face_box(frame: np.ndarray, what: str) -> np.ndarray:
    from emotivetalk_jax.data.face import NoFaceError, analyze_face

    try:
        return np.asarray(analyze_face(frame, what=what).box, np.float64)
    except NoFaceError as e:
        raise ValueError(f"no face found in the first frame of {what}; pass --crop none if the videos are already "
                         "face crops") from e


def _crop(frames: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """frames[:, y0:y1, x0:x1] with gray (110) where the box leaves the image (syncnet_python's padding)."""
    h, w = frames.shape[1:3]
    x0, y0, x1, y1 = (int(round(v)) for v in (x0, y0, x1, y1))
    pad = max(0, -x0, -y0, x1 - w, y1 - h)
    if pad:
        frames = np.pad(frames, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=110)
    return frames[:, y0 + pad:y1 + pad, x0 + pad:x1 + pad]


def sync_crop(frames: np.ndarray, box: np.ndarray) -> np.ndarray:
    """syncnet_python run_pipeline's crop around a face box (x0, y0, x1, y1): mouth-heavy, square."""
    x0, y0, x1, y1 = box
    bs, mx, my = max(y1 - y0, x1 - x0) / 2, (x0 + x1) / 2, (y0 + y1) / 2
    cs = SYNC_CROP_SCALE
    return _crop(frames, mx - bs * (1 + cs), my - bs, mx + bs * (1 + cs), my + bs * (1 + 2 * cs))


def face3d_crop(frames: np.ndarray, box: np.ndarray) -> np.ndarray:
    """A square crop FACE3D_CROP_SCALE x the face box, centred on it."""
    x0, y0, x1, y1 = box
    half, mx, my = FACE3D_CROP_SCALE * max(x1 - x0, y1 - y0) / 2, (x0 + x1) / 2, (y0 + y1) / 2
    return _crop(frames, mx - half, my - half, mx + half, my + half)


# ----------------------------------------------------------------------------- the command


def _given_weights(args: argparse.Namespace) -> dict:
    given = {m: getattr(args, flag[2:].replace("-", "_")) for m, (flag, _, _) in WEIGHTS.items()}
    if not any(given.values()):
        raise ValueError("no metric weights given: pass at least one of " + ", ".join(
            f"{flag} ({source})" for flag, _, source in WEIGHTS.values()) + " as safetensors (README, 'Evaluation')")
    return given


def _networks(args: argparse.Namespace) -> tuple[dict, dict]:
    """Loaded networks per metric, and the skipped metrics with their reason."""
    from emotivetalk_jax.convert.metric_nets import load_metric_network

    given = _given_weights(args)
    nets, skipped = {}, {}
    for metric, path in given.items():
        flag, net, _ = WEIGHTS[metric]
        if path is None:
            skipped[metric] = f"no {flag}"
        elif not Path(path).exists():
            skipped[metric] = f"{flag} {path} does not exist"
        else:
            nets[metric] = load_metric_network(net, path)
            continue
        _say(f"skipping {metric}: {skipped[metric]}")
    if not nets:
        raise ValueError("none of the given metric weights exist: " + "; ".join(skipped.values()))
    return nets, skipped


def evaluate(args: argparse.Namespace) -> dict:
    """Run the command: one JSON-able dict with the metrics whose weights were given."""
    from tqdm import tqdm

    from emotivetalk_jax.data.video import NoAudioError, read_audio, read_frames
    from emotivetalk_jax.validate import InputWarning

    _given_weights(args)
    for name, low in (("--fvd-frames", i3d.MIN_FRAMES), ("--batch", 1), ("--vshift", 1)):
        if getattr(args, name[2:].replace("-", "_")) < low:
            raise ValueError(f"{name} must be at least {low}")
    sets = {"generated": _videos(args.generated, "generated"), "reference": _videos(args.reference, "reference")}
    nets, skipped = _networks(args)
    stats = {side: {"fid": FeatureStats(inception.FEATURES), "fvd": FeatureStats(i3d.FEATURES),
                    "efid": FeatureStats(64)} for side in sets}
    rows, short = [], []
    bar = tqdm(total=sum(len(v) for v in sets.values()), desc="evaluate", unit="video", file=sys.stderr)
    for side, files in sets.items():
        for path in files:
            frames = read_frames(path, fps=25.0)
            if len(frames) == 0:
                raise ValueError(f"{path} has no frames")
            row = {"video": path.name, "set": side, "frames": int(len(frames))}
            if "fid" in nets:
                stats[side]["fid"].update(fid_features(nets["fid"], frames, args.batch))
            if "fvd" in nets:
                if len(frames) < args.fvd_frames:
                    short.append(path.name)
                stats[side]["fvd"].update(fvd_features(nets["fvd"], frames, args.fvd_frames))
            box = None
            if args.crop == "face" and ("efid" in nets or ("sync" in nets and side == "generated")):
                box = _face_box(frames[0], str(path))
            if "efid" in nets:
                faces = frames if box is None else face3d_crop(frames, box)
                stats[side]["efid"].update(face3d_coefficients(nets["efid"], faces, args.batch)[:, face3d.EXPRESSION])
            if "sync" in nets and side == "generated":
                try:
                    audio = read_audio(path)
                except NoAudioError as e:
                    raise ValueError(f"{path} has no audio track; Sync-C / Sync-D need the driving speech muxed in") from e
                faces = frames if box is None else sync_crop(frames, box)
                r = sync_scores(nets["sync"], faces, audio, batch=args.batch, vshift=args.vshift, what=str(path))
                row.update(sync_c=r.confidence, sync_d=r.min_distance, offset=r.offset)
            rows.append(row)
            bar.update(1)
    bar.close()
    if short:
        warnings.warn(f"{len(short)} videos are shorter than --fvd-frames {args.fvd_frames} (e.g. {short[0]}); "
                      "FVD used all their frames", InputWarning)
    result: dict = {"generated_videos": len(sets["generated"]), "reference_videos": len(sets["reference"])}
    for metric in ("fid", "fvd", "efid"):
        if metric in nets:
            result[metric] = _distance(stats, metric)
    if "sync" in nets:
        gen = [r for r in rows if "sync_c" in r]
        result["sync_c"] = float(np.mean([r["sync_c"] for r in gen]))
        result["sync_d"] = float(np.mean([r["sync_d"] for r in gen]))
    if skipped:
        result["skipped"] = skipped
    if args.per_video:
        result["per_video"] = rows
    return result


def _distance(stats: dict, metric: str) -> float:
    gen, ref = stats["generated"][metric], stats["reference"][metric]
    for side, s in (("generated", gen), ("reference", ref)):
        if s.count < 2:
            unit = "videos" if metric == "fvd" else "frames"
            raise ValueError(f"{metric.upper()} needs at least 2 {unit} in the {side} set; got {s.count}")
    return stats_distance(gen, ref)
