"""`emotivetalk bench-synthetic`: the synthetic-domain counterpart of the paper's Tables 1-3.

Held-out clips of the synthetic domain (`data.synthetic`, split "test": identities AND
utterances never seen in training) are rendered at the bundle's resolution; the clip's
neutral portrait, its speech and its emotion keyword (as text) go through the full
pipeline; every generated frame is read back with `data.measure` (which knows the identity,
not the state) and compared with the clip's exact ground truth:

* lip_sync_corr: Pearson correlation of measured vs true mouth opening over all frames of
  all clips (pooled), at zero lag (the Sync-C counterpart);
* av_offset_frames: the lag in [-5, 5] frames maximising that correlation (positive: the
  video lags the audio); a synced model gives 0 (the AV-offset of SyncNet);
* emotion_accuracy: fraction of clips whose majority per-frame measured emotion
  (`measure.classify_expression`) is the requested one (the E-FID counterpart);
* identity_psnr: PSNR (dB) of the generated frames against the ground-truth frames, whole
  frame, mean over frames and clips (identity, background and pose preserved; the
  ground truth's small random head motion bounds it from above);
* identity_psnr_ceiling: the same PSNR for the bundle's own VAE reconstruction of the
  ground-truth frames (encode, decode): what a perfect generator would score;
* lip_sync_corr_ceiling, emotion_accuracy_ceiling: lip_sync_corr and emotion_accuracy read
  back from that reconstruction (what the VAE lets through of the mouth and the expression);
* background_psnr: PSNR against the portrait outside the face box (what never moves).
Frames the measurement cannot read (not this identity's face) count as misses: their
opening is dropped from the correlation and their emotion is "unreadable";
`measured_fraction` reports the share read. `--ablate lip` zeroes the lip tokens,
`--ablate expression` sets e_dri = e_ref (Tab. 2). `--frames F` loops each clip's audio
and ground truth to F frames (Tab. 3: long videos). The domain's head motion is the one the
bundle was trained on (`synthetic_head_motion` in its settings) unless `--head-motion` says.
`--emotion-source text|image|video|audio` says where the asked emotion comes from (text, the
default: the keyword; image and video: another held-out identity showing it; audio: a held-out
utterance of it by another voice, read by the bundle's speech-emotion head; `bench_sources`);
each clip's `emotion_source` records how the emotion was chosen. `--fast-decode` decodes with the
bundle's fast decoder (`fast_decoder/`, issue 29), the generated frames and the ceiling's
reconstruction alike (the ceiling is then the fast decoder's).

Head motion (beyond the paper; issue 30): the domain is `MOVING_HEADS` where the bundle was
trained on it (`synthetic_moving_heads`) or `--moving-heads` says. Every generated frame's pose
is read back (`measure.read_pose`) and scored against the held-out clips' own ground truth:
pose_std_ratio (generated pose std over the domain's, per component; `eval.pose_scores`).
`--motion LEVEL` asks for a motion level (bundles with the motion knob). `--pose-from-video`
drives each clip with the pose of another held-out clip (test clip DRIVER_OFFSET + i, written as
a video with its landmark sidecar and read back through `data.pose.pose_from_video`, as a user's
driving video), and adds pose_corr (per-frame r between driving and generated pose).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from emotivetalk_jax.data.measure import lag_correlations, psnr
from emotivetalk_jax.data.measure import read_opening_and_emotion as _measure
from emotivetalk_jax.data.synthetic import SAMPLES_PER_FRAME, SyntheticDomain, domain_config
from emotivetalk_jax.data.synthetic_speech import EMOTIONS


DRIVER_OFFSET = 10_000  # --pose-from-video: test clip i is driven by test clip DRIVER_OFFSET + i


def _loop(a: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // len(a))
    return np.concatenate([a] * reps)[:n]


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def vae_reconstruction(pipe, frames: np.ndarray, portrait: np.ndarray | None = None) -> np.ndarray:
    """(N, R, R, 3) uint8 -> the bundle VAE's reconstruction (posterior mean, decoded in the
    pipeline's chunks), uint8. `portrait` (R, R, 3) uint8: the one a fast decoder that reads the
    portrait is given."""
    import jax.numpy as jnp

    from emotivetalk_jax.train.fast_decoder import encode_mean

    vae = pipe.bundle.vae
    x = jnp.asarray(frames.astype(np.float32) / 127.5 - 1.0)
    means = [np.asarray(encode_mean(vae, x[i : i + 1])) for i in range(len(x))]  # one frame a call: one compile
    z = jnp.asarray(np.concatenate(means))[None] * float(vae.config.get("scaling_factor", 0.18215))
    ref = None if portrait is None else pipe.decode_reference(jnp.asarray(portrait, jnp.float32)[None] / 127.5 - 1.0)
    return pipe.decode(z, ref)


def bench_synthetic(checkpoint, *, seed: int = 0, clips: int = 8, ablate: str | None = None,
                    frames: int | None = None, steps: int | None = None, data_seed: int = 0,
                    progress: bool = True, pipeline=None, head_motion: float | None = None,
                    first_clip: int = 0, stream: bool = False, emotion_source: str = "text",
                    mark: bool = True, motion: float | None = None, pose_from_video: bool = False,
                    moving_heads: bool | None = None, fast_decode: bool = False) -> dict:
    """Generate `clips` held-out clips (test clips first_clip .. first_clip + clips - 1) and score
    them (see the module docstring). `stream`: generate through `EmotiveTalkPipeline.stream` (the
    clip's speech in 0.2 s chunks) instead of the offline pipeline. `emotion_source`: where the
    asked emotion comes from (`eval.bench_sources`). `mark`: the frames scored carry the provenance
    watermark, as every generated video does (False: `--no-mark`, to measure what it costs).
    `motion`, `pose_from_video`, `moving_heads`: head motion (see the module docstring). `fast_decode`:
    decode with the bundle's fast decoder."""
    import tempfile

    from emotivetalk_jax.eval.bench_sources import DESCRIPTION, SOURCES, source_emotion
    from emotivetalk_jax.data import face as facelib
    from emotivetalk_jax.data import synthetic_face as sf
    from emotivetalk_jax.pipeline import ABLATIONS, EmotiveTalkPipeline, GenerationError

    if clips < 1:
        raise GenerationError(f"--clips must be >= 1, got {clips}")
    if first_clip < 0:
        raise GenerationError(f"--first-clip must be >= 0, got {first_clip}")
    if frames is not None and frames < 1:
        raise GenerationError(f"--frames must be >= 1, got {frames}")
    if ablate not in ABLATIONS:
        raise GenerationError(f"unknown ablation {ablate!r}; choose lip or expression")
    if stream and ablate:
        raise GenerationError("--stream generates as a user would; it takes no --ablate")
    if stream and (motion is not None or pose_from_video):
        raise GenerationError("--stream takes no --motion or --pose-from-video yet")
    if emotion_source not in SOURCES:
        raise GenerationError(f"unknown --emotion-source {emotion_source!r}; choose one of {', '.join(SOURCES)}")
    pipe = pipeline or EmotiveTalkPipeline.from_pretrained(checkpoint, progress=progress)
    pipe.fast_decode = fast_decode  # GenerationError where the bundle has no fast_decoder/
    if emotion_source == "audio" and pipe.bundle.speech_head is None:
        raise GenerationError(f"checkpoint {checkpoint} has no speech-emotion head (speech_head/), which "
                              "--emotion-source audio reads; add one (emotivetalk speech-head train HEAD, then "
                              "emotivetalk speech-head add HEAD CHECKPOINT)")
    from emotivetalk_jax.data.measure import read_pose
    from emotivetalk_jax.data import pose as poselib
    from emotivetalk_jax.data.synthetic import write_clip
    from emotivetalk_jax.eval.pose_scores import pose_scores

    motion = poselib.check_motion_level(motion, pipe.settings.motion_conditioning)
    if pose_from_video and not bool(getattr(pipe.bundle.ethd.ethd_config, "pose", False)):
        raise GenerationError(f"checkpoint {checkpoint} has no pose condition (stage 2 trained without "
                              "pose_condition): --pose-from-video needs one")
    r = pipe.resolution
    head = float(pipe.settings.synthetic_head_motion if head_motion is None else head_motion)
    moving = bool(pipe.settings.synthetic_moving_heads if moving_heads is None else moving_heads)
    domain = SyntheticDomain(data_seed, domain_config(head, moving))
    gen_pose, true_pose, drive_pose = [], [], []
    measured, truth, correct, readable, total = [], [], [], 0, 0
    id_psnr, ceiling, bg_psnr, per_clip = [], [], [], []
    rec_measured, rec_correct = [], []
    t0 = time.perf_counter()
    gen_s = 0.0
    sources = tempfile.TemporaryDirectory(prefix="emotivetalk-bench-")
    for i in range(first_clip, first_clip + clips):
        clip = domain.clip(i, "test")
        n = frames or clip.num_frames
        states = clip.states[np.arange(n) % clip.num_frames]
        audio = _loop(clip.audio[: clip.num_frames * SAMPLES_PER_FRAME], n * SAMPLES_PER_FRAME)
        lm = clip.portrait_landmarks(r)
        boxes = (facelib.lip_box(lm), facelib.face_box(lm), lm)  # the landmarks: for aligned face encoders
        portrait = clip.portrait(r)
        emotion, how = source_emotion(pipe, domain, clip, i, emotion_source, n, Path(sources.name))
        driving = None
        if pose_from_video:
            paths = write_clip(domain.clip(DRIVER_OFFSET + i, "test"), Path(sources.name) / "pose", r)
            driving = poselib.fit_length(poselib.pose_from_video(paths["mp4"], pipe.settings.fps), n)  # as played
            drive_pose.append(driving)
        g0 = time.perf_counter()
        if stream:
            chunks = (audio[k:k + 3200] for k in range(0, len(audio), 3200))
            from emotivetalk_jax.streaming import exhaust

            res = exhaust(pipe.stream(portrait, chunks, emotion=emotion, seed=seed + i, steps=steps,
                                      crop=False, boxes=boxes, mark=mark))
        else:
            res = pipe(portrait, audio, emotion=emotion, seed=seed + i, steps=steps, crop=False, boxes=boxes,
                       ablate=ablate, mark=mark, motion=motion, pose=driving)
        gen_s += time.perf_counter() - g0
        video = res.frames
        opening, emo = _measure(video, clip.identity)
        gen_pose.append(read_pose(video, clip.identity))
        true_pose.append(clip.pose()[np.arange(n) % clip.num_frames])
        measured.append(opening)
        truth.append(states[:, 0])
        readable += int((emo >= 0).sum())
        total += len(emo)
        votes = np.bincount(emo[emo >= 0], minlength=len(EMOTIONS))
        majority = int(votes.argmax()) if votes.sum() else -1
        correct.append(majority == clip.emotion_id)
        gt = sf.render(clip.identity, states, r)
        per_frame = [psnr(a, b) for a, b in zip(video, gt)]
        id_psnr.append(float(np.mean(per_frame)))
        rec = vae_reconstruction(pipe, gt, portrait)
        ceiling.append(float(np.mean([psnr(a, b) for a, b in zip(rec, gt)])))
        rec_opening, rec_emo = _measure(rec, clip.identity)
        rec_measured.append(rec_opening)
        rec_votes = np.bincount(rec_emo[rec_emo >= 0], minlength=len(EMOTIONS))
        rec_correct.append(bool(rec_votes.sum()) and int(rec_votes.argmax()) == clip.emotion_id)
        outside = 1 - facelib.box_mask(boxes[1], r, r)
        bg_psnr.append(float(np.mean([psnr(a, portrait, outside > 0) for a in video])))
        row = {"clip": clip.name, "emotion": clip.emotion,
               "measured_emotion": EMOTIONS[majority] if majority >= 0 else None, "frames": n,
               "identity_psnr": id_psnr[-1], "emotion_source": how}
        if n >= 240:  # drift: the first and the last 120 frames
            row.update(identity_psnr_first_120=float(np.mean(per_frame[:120])),
                       identity_psnr_last_120=float(np.mean(per_frame[-120:])))
        per_clip.append(row)
    sources.cleanup()
    lags = lag_correlations(measured, truth)
    finite = {k: v for k, v in lags.items() if math.isfinite(v)}
    offset = max(finite, key=lambda k: (finite[k], -abs(k))) if finite else None
    video_s = sum(c["frames"] for c in per_clip) / pipe.settings.fps
    out = {
        "lip_sync_corr": lags[0],
        "av_offset_frames": offset,
        "emotion_accuracy": float(np.mean(correct)),
        "identity_psnr": float(np.mean(id_psnr)),
        "identity_psnr_ceiling": float(np.mean(ceiling)),
        # the same read-back of the VAE's reconstruction of the ground truth: a perfect generator's
        # scores through this checkpoint's VAE
        "lip_sync_corr_ceiling": lag_correlations(rec_measured, truth)[0],
        "emotion_accuracy_ceiling": float(np.mean(rec_correct)),
        "background_psnr": float(np.mean(bg_psnr)),
        "measured_fraction": readable / max(total, 1),
        "lag_correlations": {str(k): v for k, v in lags.items()},
        **pose_scores(gen_pose, true_pose, drive_pose if pose_from_video else None),
        "settings": {"checkpoint": str(checkpoint), "variant": pipe.settings.variant, "resolution": r,
                     "seed": seed, "data_seed": data_seed, "clips": clips, "first_clip": first_clip, "split": "test",
                     "ablate": ablate, "stream": stream, "mark": mark,
                     "frames": frames, "steps": steps or pipe.settings.steps, "emotion_source": emotion_source,
                     "emotion": DESCRIPTION[emotion_source],
                     "head_motion": head, "moving_heads": moving, "motion": motion,
                     "pose_from_video": pose_from_video, "decoder": "fast" if fast_decode else "full"},
        "clips": per_clip,
        "seconds": round(time.perf_counter() - t0, 2),
        "seconds_per_video_second": round(gen_s / max(video_s, 1e-9), 3),
    }
    return _sanitize(out)


def _sanitize(x):
    if isinstance(x, dict):
        return {k: _sanitize(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_sanitize(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return _clean(float(x))
    if isinstance(x, np.integer):
        return int(x)
    return x


def add_bench_arguments(p) -> None:
    p.add_argument("--checkpoint", metavar="DIR", help="pipeline checkpoint folder (default: the installed demo)")
    p.add_argument("--seed", type=int, default=0, help="generation seed (clip i uses seed + i)")
    p.add_argument("--clips", type=int, default=8, help="held-out clips to generate")
    p.add_argument("--first-clip", type=int, default=0,
                   help="the first held-out clip (choose settings on other clips than those you report)")
    p.add_argument("--ablate", choices=("lip", "expression"), default=None)
    p.add_argument("--frames", type=int, default=None, help="frames per clip (audio looped); default: the clip's own")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the checkpoint's)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic domain (the training data's)")
    p.add_argument("--head-motion", type=float, default=None,
                   help="synthetic head motion (default: the one the checkpoint was trained on)")
    p.add_argument("--moving-heads", action="store_true", default=None,
                   help="score on the moving-heads domain (default: the one the checkpoint was trained on)")
    p.add_argument("--motion", type=float, default=None, metavar="LEVEL",
                   help="head motion level to ask for, 0 (still) to 2 (checkpoints with the motion knob)")
    p.add_argument("--pose-from-video", action="store_true",
                   help="drive each clip's head pose with another held-out clip's video (checkpoints with the pose "
                        "condition); adds pose_corr")
    p.add_argument("--stream", action="store_true", help="generate through the streaming generator (0.2 s chunks)")
    p.add_argument("--emotion-source", choices=("text", "image", "video", "audio"), default="text",
                   help="where the asked emotion comes from: its keyword (text), a face (image) or a driving video "
                        "of another held-out identity, or a held-out utterance by another voice (audio: the "
                        "checkpoint's speech-emotion head)")
    p.add_argument("--no-mark", action="store_true",
                   help="score frames without the provenance watermark (to measure what it costs)")
    p.add_argument("--fast-decode", action="store_true",
                   help="decode with the checkpoint's fast decoder (fast_decoder/) instead of its VAE's")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def bench_main(args) -> dict:
    from emotivetalk_jax.pipeline import GenerationError, default_checkpoint

    ckpt = args.checkpoint or default_checkpoint()
    if ckpt is None:
        raise GenerationError("no --checkpoint given and no demo checkpoint installed; pass --checkpoint DIR")
    from emotivetalk_jax.bundle import ethd_has_pose, read_settings
    from emotivetalk_jax.data.pose import check_motion_level

    check_motion_level(getattr(args, "motion", None), read_settings(ckpt).motion_conditioning)  # before any model
    if getattr(args, "fast_decode", False) and not (Path(ckpt) / "fast_decoder").is_dir():
        from emotivetalk_jax.pipeline import no_fast_decoder

        raise GenerationError(no_fast_decoder(ckpt))
    if getattr(args, "pose_from_video", False) and not ethd_has_pose(ckpt):
        raise GenerationError(f"checkpoint {ckpt} has no pose condition (stage 2 trained without pose_condition): "
                              "--pose-from-video needs one")
    return bench_synthetic(os.fspath(ckpt), seed=args.seed, clips=args.clips, ablate=args.ablate, frames=args.frames,
                           steps=args.steps, data_seed=args.data_seed, progress=not args.quiet,
                           head_motion=args.head_motion, first_clip=args.first_clip,
                           stream=getattr(args, "stream", False), emotion_source=args.emotion_source,
                           mark=not getattr(args, "no_mark", False),
                           motion=getattr(args, "motion", None), pose_from_video=getattr(args, "pose_from_video", False),
                           moving_heads=getattr(args, "moving_heads", None),
                           fast_decode=getattr(args, "fast_decode", False))
