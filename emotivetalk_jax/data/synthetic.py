"""A synthetic talking-face domain with exact ground truth (numpy only).

Every clip is a pure function of (seed, split, index): an identity (face geometry,
colours, hair, voice), an emotion (one of the paper's 8) whose intensity drifts over
time, an utterance from a source-filter voice whose prosody follows the emotion, and
per-frame states at 25 fps: mouth opening / width from the speech articulation,
expression (brows, eye openness, mouth corners) from the emotion, small head motion.
Frames are rendered on demand at any size (64 to 512 px in practice), so a training
pipeline can render only the window it needs.

Splits: "train" (training identities, training utterances), "test" (held-out
identities AND held-out utterances), "test_seen" (training identities, held-out
utterances). Identities are drawn from a fixed pool per seed: ids below
`num_identities - heldout_identities` are training identities, the rest are held out.

`measure.py` reads the mouth and expression back from any frame of a known identity,
so lip sync and emotion control of a generator can be scored exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np

from emotivetalk_jax.data import synthetic_face as sf
from emotivetalk_jax.data import synthetic_speech as sp
from emotivetalk_jax.data.synthetic_speech import EMOTIONS, FPS, SR

SPLITS = ("train", "test", "test_seen")
SAMPLES_PER_FRAME = SR // FPS  # 640


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Difficulty knobs of the domain (defaults: easy enough for a tiny CPU model)."""

    size: int = 64  # default render size (px)
    min_seconds: float = 2.0
    max_seconds: float = 4.0
    num_identities: int = 256  # identity pool per seed
    heldout_identities: int = 32  # the last ones, used only by the "test" split
    identity_variation: float = 1.0  # 0: every face has the mean geometry, 1: full spread
    head_motion: float = 1.0  # scales `head_motion_amplitude`
    # Peak (dx, dy, roll) of the head motion at head_motion 1: dx, dy image fractions, roll
    # degrees. The default, 1.2% / 0.8% / 2 degrees, moves a 64 px face by under a pixel;
    # `MOVING_HEADS` is the domain with motion a 64 px frame shows.
    head_motion_amplitude: tuple[float, float, float] = (0.012, 0.008, 2.0)
    # Per-clip motion level: each clip's amplitude is head_motion x a level drawn uniformly from
    # this range (from its own random stream, so the rest of the clip does not change); None:
    # every clip at level 1 (the domain before levels existed).
    head_motion_levels: tuple[float, float] | None = None
    intensity: tuple[float, float] = (0.6, 1.0)  # emotion intensity range over time
    intensity_rate: float = 0.3  # Hz of the intensity drift
    snr_db: float = 40.0  # speech to background noise
    emotions: tuple[str, ...] = EMOTIONS

    def __post_init__(self):
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ValueError(f"need 0 < min_seconds <= max_seconds, got {self.min_seconds}, {self.max_seconds}")
        if not 0 < self.heldout_identities < self.num_identities:
            raise ValueError("need 0 < heldout_identities < num_identities")
        bad = [e for e in self.emotions if e not in EMOTIONS]
        if bad:
            raise ValueError(f"unknown emotions {bad}; expected a subset of {', '.join(EMOTIONS)}")
        if not 0.0 <= self.intensity[0] <= self.intensity[1] <= 1.5:
            raise ValueError(f"intensity range must satisfy 0 <= lo <= hi <= 1.5, got {self.intensity}")
        if not self.head_motion >= 0:
            raise ValueError(f"head_motion must be >= 0, got {self.head_motion}")
        if len(self.head_motion_amplitude) != 3 or not all(a >= 0 for a in self.head_motion_amplitude):
            raise ValueError(f"head_motion_amplitude must be 3 values >= 0 (dx, dy, roll), got {self.head_motion_amplitude}")
        lv = self.head_motion_levels
        if lv is not None and not (len(lv) == 2 and 0.0 <= lv[0] <= lv[1]):
            raise ValueError(f"head_motion_levels must be (lo, hi) with 0 <= lo <= hi, got {lv}")


# The domain with head motion a 64 px frame shows (issue 30): peaks of 4% / 3% of the image
# (2.6 / 1.9 px at 64 px) and 6 degrees (1.9 px at the face's edge) at level 1, each clip's level
# drawn from [0, 2] (still to twice that), so a motion knob has something to learn. `data.measure`
# reads the mouth, the expression and the pose back from it as from the still domain (measured
# on held-out ground truth: benchmarks/README.md).
MOVING_HEADS = {"head_motion_amplitude": (0.04, 0.03, 6.0), "head_motion_levels": (0.0, 2.0)}


def domain_config(head_motion: float = 1.0, moving_heads: bool = False, **kw) -> SynthConfig:
    """The domain's config as training and the bench name it: `head_motion` scales the motion,
    `moving_heads` takes `MOVING_HEADS`' amplitudes and per-clip levels."""
    return SynthConfig(head_motion=float(head_motion), **(MOVING_HEADS if moving_heads else {}), **kw)


@dataclasses.dataclass
class Clip:
    """One synthetic clip. F frames at 25 fps, N = 640 F audio samples at 16 kHz."""

    seed: int
    split: str
    index: int
    identity_id: int
    identity: sf.Identity
    emotion: str
    audio: np.ndarray  # (N,) float32
    states: np.ndarray  # (F, 9) see synthetic_face.STATE_KEYS
    intensity: np.ndarray  # (F,)
    phones: list
    size: int
    motion_level: float = 1.0  # this clip's head-motion amplitude factor (`SynthConfig.head_motion_levels`)
    _portraits: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def num_frames(self) -> int:
        return len(self.states)

    @property
    def emotion_id(self) -> int:
        return EMOTIONS.index(self.emotion)

    @property
    def name(self) -> str:
        return f"{self.split}_{self.seed}_{self.index:06d}"

    def frames(self, start: int = 0, stop: int | None = None, size: int | None = None) -> np.ndarray:
        """(F', size, size, 3) uint8 frames [start, stop)."""
        return sf.render(self.identity, self.states[start:stop], size or self.size)

    def landmarks(self, start: int = 0, stop: int | None = None, size: int | None = None) -> np.ndarray:
        """(F', 68, 2) float32 pixel (x, y) in dlib order."""
        s = size or self.size
        return np.stack([sf.landmarks(self.identity, st, s) for st in self.states[start:stop]])

    def portrait(self, size: int | None = None) -> np.ndarray:
        """The reference portrait: neutral face, closed mouth, no head motion (S, S, 3)."""
        return self._portrait(size or self.size)[0].copy()

    def portrait_landmarks(self, size: int | None = None) -> np.ndarray:
        return self._portrait(size or self.size)[1].copy()

    def pose(self) -> np.ndarray:
        """The rendered head pose (F, 4) relative to the portrait, in `data.pose.POSE_KEYS` order
        (roll degrees, dx, dy image fractions, scale: the domain has no scale motion)."""
        return np.stack([self.states[:, 8], self.states[:, 6], self.states[:, 7],
                         np.ones(self.num_frames, np.float32)], -1).astype(np.float32)

    def _portrait(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(portrait, its landmarks) at `size`, rendered once per clip (training windows take the
        neutral reference at every step)."""
        if size not in self._portraits:
            state = sf.neutral_state(1)
            self._portraits[size] = (sf.render(self.identity, state, size)[0],
                                     sf.landmarks(self.identity, state[0], size))
        return self._portraits[size]

    def audio_window(self, start: int, stop: int) -> np.ndarray:
        """Audio samples aligned with frames [start, stop): (640 (stop - start),)."""
        return self.audio[start * SAMPLES_PER_FRAME : stop * SAMPLES_PER_FRAME]

    def ground_truth(self, size: int | None = None, with_landmarks: bool = True) -> dict:
        s = size or self.size
        gt = {
            "name": self.name, "seed": self.seed, "split": self.split, "index": self.index,
            "identity_id": self.identity_id, "identity": self.identity.to_dict(),
            "emotion": self.emotion, "emotion_id": self.emotion_id, "head_motion_level": self.motion_level,
            "fps": FPS, "sample_rate": SR, "num_frames": self.num_frames, "size": s,
            "phones": [list(p) for p in self.phones],
            "frames": {k: np.round(self.states[:, i], 5).tolist() for i, k in enumerate(sf.STATE_KEYS)},
        }
        gt["frames"]["intensity"] = np.round(self.intensity, 5).tolist()
        if with_landmarks:
            gt["landmarks"] = np.round(self.landmarks(size=s), 2).tolist()
            gt["portrait_landmarks"] = np.round(self.portrait_landmarks(s), 2).tolist()
        return gt


class SyntheticDomain:
    """Deterministic clip factory: `domain.clip(index, split)`; clips are cached per index."""

    def __init__(self, seed: int = 0, config: SynthConfig | None = None):
        self.seed = int(seed)
        self.config = config or SynthConfig()

    def identity(self, identity_id: int) -> sf.Identity:
        return _identity(self.seed, identity_id, self.config.identity_variation)

    def identity_ids(self, split: str) -> range:
        n, h = self.config.num_identities, self.config.heldout_identities
        return range(n - h, n) if split == "test" else range(0, n - h)

    def clip(self, index: int, split: str = "train") -> Clip:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        if index < 0:
            raise ValueError(f"clip index must be >= 0, got {index}")
        return _clip(self.seed, split, int(index), self.config)


@functools.lru_cache(maxsize=4096)
def _identity(seed: int, identity_id: int, variation: float) -> sf.Identity:
    return sf.Identity.sample(np.random.default_rng([seed, 7, identity_id]), variation)


@functools.lru_cache(maxsize=1024)  # a training run's clips are drawn again every epoch; ~0.2 MB each
def _clip(seed: int, split: str, index: int, cfg: SynthConfig) -> Clip:
    code = SPLITS.index(split)
    rng = np.random.default_rng([seed, 11, code, index])
    ids = SyntheticDomain(seed, cfg).identity_ids(split)
    identity_id = int(ids[rng.integers(len(ids))])
    ident = _identity(seed, identity_id, cfg.identity_variation)
    emotion = cfg.emotions[int(rng.integers(len(cfg.emotions)))]
    num_frames = int(rng.integers(round(cfg.min_seconds * FPS), round(cfg.max_seconds * FPS) + 1))
    t = np.arange(num_frames) / FPS
    lo, hi = cfg.intensity
    ph = rng.uniform(0, 2 * np.pi, 2)
    f = cfg.intensity_rate * rng.uniform(0.5, 1.5)
    wave = 0.5 + 0.35 * np.sin(2 * np.pi * f * t + ph[0]) + 0.15 * np.sin(2 * np.pi * 2.3 * f * t + ph[1])
    intensity = (lo + (hi - lo) * wave).astype(np.float32)
    utt = sp.synthesize(np.random.default_rng([seed, 13, code, index]), num_frames / FPS, ident.voice, emotion,
                        float(intensity.mean()), cfg.snr_db)
    opening, width = utt.frame_tracks(num_frames)
    states = np.zeros((num_frames, len(sf.STATE_KEYS)), np.float32)
    states[:, 0], states[:, 1] = opening, width
    states[:, 2:6] = sf.expression(emotion, intensity if emotion != "neutral" else np.zeros_like(intensity))
    level = 1.0
    if cfg.head_motion_levels is not None:  # its own stream: every other draw of the clip stays as it was
        level = float(np.random.default_rng([seed, 17, code, index]).uniform(*cfg.head_motion_levels))
    m = cfg.head_motion * level
    for j, amp in zip((6, 7, 8), cfg.head_motion_amplitude):
        a = rng.uniform(0, 2 * np.pi, 2)
        fr = rng.uniform(0.15, 0.6, 2)
        states[:, j] = m * amp * (0.7 * np.sin(2 * np.pi * fr[0] * t + a[0]) + 0.3 * np.sin(2 * np.pi * fr[1] * t + a[1]))
    audio = utt.audio[: num_frames * SAMPLES_PER_FRAME]
    return Clip(seed, split, index, identity_id, ident, emotion, audio, states, intensity, utt.phones, cfg.size,
                level)


def clip_from_ground_truth(gt: dict) -> tuple[sf.Identity, np.ndarray]:
    """(identity, states (F, 9)) back from a clip's ground-truth JSON dict."""
    ident = sf.Identity.from_dict(gt["identity"])
    states = np.stack([np.asarray(gt["frames"][k], np.float32) for k in sf.STATE_KEYS], -1)
    return ident, states


# ----------------------------------------------------------------------------- writing


def write_clip(clip: Clip, out_dir: str | Path, size: int | None = None) -> dict[str, str]:
    """Write NAME.mp4 (H.264 + AAC), NAME.png (portrait), NAME.wav, NAME.json."""
    import soundfile

    from emotivetalk_jax.data import video

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = size or clip.size
    paths = {k: out / f"{clip.name}.{k}" for k in ("mp4", "png", "wav", "json")}
    video.write_mp4(paths["mp4"], clip.frames(size=s), FPS, clip.audio, SR)
    video.atomic_write_image(paths["png"], clip.portrait(s))
    tmp = paths["wav"].with_suffix(".tmp.wav")
    soundfile.write(tmp, clip.audio, SR, subtype="PCM_16")
    tmp.replace(paths["wav"])
    tmpj = paths["json"].with_suffix(".json.tmp")
    tmpj.write_text(json.dumps(clip.ground_truth(s)))
    tmpj.replace(paths["json"])
    return {k: str(v) for k, v in paths.items()}


def _write_one(args) -> str:
    seed, split, index, size, cfg, out_dir = args
    clip = SyntheticDomain(seed, cfg).clip(index, split)
    write_clip(clip, out_dir, size)
    return clip.name


def synth_main(out_dir: str | Path, clips: int, seed: int = 0, size: int = 64, split: str = "train",
               workers: int = 1, config: SynthConfig | None = None, progress: bool = True) -> dict:
    """`emotivetalk synth`: write `clips` clips of `split` to `out_dir`; returns a summary."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    if clips < 1:
        raise ValueError(f"--clips must be >= 1, got {clips}")
    if not 16 <= size <= 2048 or size % 2:
        raise ValueError(f"--size must be an even number of pixels in [16, 2048], got {size}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    cfg = dataclasses.replace(config or SynthConfig(), size=size)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(seed, split, i, size, cfg, str(out)) for i in range(clips)]
    bar = tqdm(total=clips, desc="synth", unit="clip", disable=not progress)
    names = []
    if workers <= 1:
        for j in jobs:
            names.append(_write_one(j))
            bar.update()
    else:
        import multiprocessing

        # spawn, not fork: a forked child of a process running JAX threads can deadlock.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            for name in ex.map(_write_one, jobs):
                names.append(name)
                bar.update()
    bar.close()
    summary = {"out_dir": str(out), "clips": len(names), "seed": seed, "split": split, "size": size,
               "config": {k: v for k, v in dataclasses.asdict(cfg).items()}}
    (out / "synth.json").write_text(json.dumps(summary, indent=1))
    return summary


def frame_times(num_frames: int) -> np.ndarray:
    """Centre time (s) of each frame."""
    return (np.arange(num_frames) + 0.5) / FPS


__all__ = ["SPLITS", "SynthConfig", "MOVING_HEADS", "domain_config", "Clip", "SyntheticDomain", "synth_main", "write_clip", "clip_from_ground_truth"]
