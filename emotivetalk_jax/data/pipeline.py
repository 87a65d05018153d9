"""grain input pipelines: random F-frame windows with aligned audio, reference, masks, labels.

Two random-access sources, one transform:

* `SyntheticClips(seed, split, num_clips)` -> `synthetic.Clip` (frames rendered on demand)
* `PreparedClips(out_dir, split)` -> a clip dict from `emotivetalk prepare` (JPEG frames)
* `ClipWindow` (a grain RandomMap) picks a window start and a reference frame from the
  record's own seeded rng, so the pipeline is deterministic and its iterator state
  (`get_state` / `set_state`) restores the exact next batches.

`make_loader` wires source -> IndexSampler (shuffled, sharded per process) -> ClipWindow
-> Batch into a `grain.DataLoader` with optional worker processes. Sharding: pass
`shard=(index, count)`, or leave None to shard by JAX process (multi-host).

Example keys (per example; batching adds a leading B):
  frames (F, S, S, 3) uint8, reference (S, S, 3) uint8, audio (640 (F + 2 c),) float32
  (c = audio_context frames each side, zero-padded at clip edges), landmarks (F, 68, 2),
  reference_landmarks (68, 2) float32 (the reference's: aligned face encoders align it),
  valid (F,) bool (False on frames repeated to pad a short clip), emotion () int32 (-1
  unknown), start () int32, clip () int32, mask_lip_{s} / mask_face_{s} (s, s, 1) float32
  for every s in mask_sizes (from the reference frame's boxes), and for synthetic
  clips the ground truth: opening, width, intensity (F,), expression (F, 4), identity ().
  With `features` (per-clip whole-utterance audio features, `data.audio_cache`):
  frame_features (F + 2 c, D) float32, the rows the pipeline's A_w windows read.
  With `frozen` (per-clip frozen-model outputs, `data.frozen_cache`): frozen_<name> (F, ...)
  for each cached array, rows cut as `frames` is (same start, last row repeated past the end).
  With `pose`: pose (F, 4) float32, each frame's head pose relative to the reference
  (`data.pose`; synthetic: the rendered pose, prepared: the stored landmark fit), and motion ()
  float32, the whole clip's `pose.motion_level` (stage 2's motion knob).

The reference: another frame of the clip (uniform), or, with probability
`reference_neutral`, the clip's neutral closed-mouth portrait (synthetic clips; what the
bench and users give at inference). Prepared clips have no neutral portrait and always
take another frame.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import grain
import numpy as np

from emotivetalk_jax.data import face as facelib
from emotivetalk_jax.data import pose as poselib
from emotivetalk_jax.data import synthetic as syn
from emotivetalk_jax.data.audio_cache import feature_window
from emotivetalk_jax.data.frozen_cache import window_rows
from emotivetalk_jax.data import synthetic_face as sf

SAMPLES_PER_FRAME = 640


class SyntheticClips:
    """Random-access source over synthetic clips `index` 0..num_clips-1 of a split."""

    def __init__(self, seed: int = 0, split: str = "train", num_clips: int = 1000,
                 config: syn.SynthConfig | None = None):
        if num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {num_clips}")
        self.domain = syn.SyntheticDomain(seed, config)
        self.split = split
        self.num_clips = num_clips
        self.domain.clip(0, split)  # validates the split early

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, i: int) -> syn.Clip:
        return self.domain.clip(int(i), self.split)

    def __repr__(self) -> str:
        return f"SyntheticClips(seed={self.domain.seed}, split={self.split!r}, num_clips={self.num_clips})"


class PreparedClips:
    """Random-access source over a split written by `emotivetalk prepare` (opened lazily)."""

    def __init__(self, out_dir: str | Path, split: str = "train"):
        from emotivetalk_jax.data.prepare import open_prepared

        self.out_dir, self.split = str(out_dir), split
        self._len = len(open_prepared(out_dir, split))
        self._ds = None

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict:
        if self._ds is None:
            from emotivetalk_jax.data.prepare import open_prepared

            self._ds = open_prepared(self.out_dir, self.split)
        rec = dict(self._ds[int(i)])
        rec["_index"] = int(i)
        return rec

    def __getstate__(self):
        return {**self.__dict__, "_ds": None}

    def __repr__(self) -> str:
        return f"PreparedClips({self.out_dir!r}, split={self.split!r}, n={self._len})"


def _window(n: int, frames: int, rng: np.random.Generator) -> tuple[int, np.ndarray, np.ndarray]:
    """Start, frame indices (frames,) (edge-repeated when the clip is short), valid mask."""
    start = int(rng.integers(0, max(n - frames, 0) + 1))
    idx = np.arange(start, start + frames)
    valid = idx < n
    return start, np.minimum(idx, n - 1), valid


def _audio_window(audio: np.ndarray, start: int, frames: int, context: int) -> np.ndarray:
    a = (start - context) * SAMPLES_PER_FRAME
    b = (start + frames + context) * SAMPLES_PER_FRAME
    out = np.zeros(b - a, np.float32)
    lo, hi = max(a, 0), min(b, len(audio))
    if hi > lo:
        out[lo - a : hi - a] = audio[lo:hi]
    return out


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size and img.shape[1] == size:
        return img
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


@dataclasses.dataclass
class ClipWindow(grain.transforms.RandomMap):
    """Clip (synthetic or prepared) -> one training window; see the module docstring."""

    frames: int = 16
    size: int | None = 64
    mask_sizes: Sequence[int] = ()
    audio_context: int = 2
    features: Sequence[np.ndarray] | None = None  # clip index -> (N, D) whole-utterance features
    frozen: Sequence[dict[str, np.ndarray]] | None = None  # clip index -> {name: (R, ...)} frozen outputs
    reference_neutral: float = 0.0  # probability that the reference is the neutral portrait
    # False: no `frames` / `landmarks`, for a step that reads the window from `frozen` alone
    # (stage 2 with `frozen_cache`: rendering them was most of its loader's time)
    pixels: bool = True
    pose: bool = False  # add `pose` and `motion` (see the module docstring)

    def random_map(self, record, rng: np.random.Generator) -> dict:
        if isinstance(record, syn.Clip):
            return self._synthetic(record, rng)
        return self._prepared(record, rng)

    def _with_features(self, ex, index, start):
        if self.features is not None:
            ex["frame_features"] = feature_window(self.features[index], start, self.frames, self.audio_context)
        if self.frozen is not None:
            for name, arr in self.frozen[index].items():
                ex[f"frozen_{name}"] = window_rows(arr, start, self.frames)
        return ex

    @staticmethod
    def _with_pose(ex, pose: np.ndarray, idx: np.ndarray, ref: int | None):
        """pose (N, 4) of the whole clip against its own reference (the portrait / first frame);
        `ref`: the window's reference frame (None: the portrait)."""
        ref_pose = poselib.STILL if ref is None else pose[ref]
        ex["pose"] = poselib.relative_pose(pose[idx], ref_pose)
        ex["motion"] = np.float32(poselib.motion_level(pose))
        return ex

    def _with_masks(self, ex, lip_box, face_box, native):
        for s in self.mask_sizes:
            ex[f"mask_lip_{s}"] = facelib.box_mask(lip_box, native, s)
            ex[f"mask_face_{s}"] = facelib.box_mask(face_box, native, s)
        return ex

    def _synthetic(self, clip: syn.Clip, rng: np.random.Generator) -> dict:
        size = self.size or clip.size
        n = clip.num_frames
        start, idx, valid = _window(n, self.frames, rng)
        ref = int(rng.integers(n))
        states = clip.states[idx]
        neutral = self.reference_neutral > 0 and rng.random() < self.reference_neutral
        if neutral:
            reference, ref_lm = clip.portrait(size), clip.portrait_landmarks(size)
        else:
            ref_state = clip.states[ref]
            reference = sf.render(clip.identity, ref_state[None], size)[0]
            ref_lm = sf.landmarks(clip.identity, ref_state, size)
        ex = {
            "reference": reference,
            "audio": _audio_window(clip.audio, start, self.frames, self.audio_context),
            "valid": valid, "emotion": np.int32(clip.emotion_id), "start": np.int32(start),
            "clip": np.int32(clip.index), "identity": np.int32(clip.identity_id), "reference_landmarks": np.asarray(ref_lm, np.float32),
            "opening": states[:, 0].copy(), "width": states[:, 1].copy(),
            "expression": states[:, 2:6].copy(), "intensity": clip.intensity[idx],
        }
        if self.pixels:
            ex["frames"] = sf.render(clip.identity, states, size)
            ex["landmarks"] = np.stack([sf.landmarks(clip.identity, s, size) for s in states])
        if self.pose:
            self._with_pose(ex, clip.pose(), idx, None if neutral else ref)
        self._with_features(ex, clip.index, start)
        return self._with_masks(ex, facelib.lip_box(ref_lm), facelib.face_box(ref_lm), size)

    def _prepared(self, rec: dict, rng: np.random.Generator) -> dict:
        from emotivetalk_jax.data.video import decode_jpeg

        jpegs = rec["frames"]
        n = min(len(jpegs), int(rec["num_frames"]))
        start, idx, valid = _window(n, self.frames, rng)
        ref = int(rng.integers(n))
        native = int(rec["lip_mask"].shape[0])
        size = self.size or native
        dec = {}
        for i in (set(idx.tolist()) if self.pixels else set()) | {ref}:
            dec[i] = _resize(decode_jpeg(jpegs[i]), size)
        scale = size / native
        ex = {
            "reference": dec[ref],
            "audio": _audio_window(np.asarray(rec["audio"]), start, self.frames, self.audio_context),
            "valid": valid, "emotion": np.int32(rec["emotion"]), "start": np.int32(start),
            "clip": np.int32(rec.get("_index", -1)),
            "reference_landmarks": (np.asarray(rec["landmarks"])[ref] * scale).astype(np.float32),
        }
        if self.pixels:
            ex["frames"] = np.stack([dec[i] for i in idx])
            ex["landmarks"] = np.asarray(rec["landmarks"])[idx] * scale
        if self.pose:
            pose = rec.get("pose")
            if pose is None:  # a dataset prepared before poses were stored
                lms = np.asarray(rec["landmarks"])
                pose = poselib.pose_from_landmarks(lms, lms[0], native)
            self._with_pose(ex, np.asarray(pose, np.float32)[:n], idx, ref)
        feats = np.asarray(rec.get("audio_features", np.zeros((0, 80), np.float32)))
        if len(feats):  # 100 Hz features: 4 per video frame
            fidx = np.clip(idx[:, None] * 4 + np.arange(4)[None], 0, len(feats) - 1)
            ex["audio_features"] = feats[fidx]
        self._with_features(ex, int(rec.get("_index", -1)), start)
        return self._with_masks(ex, rec["lip_boxes"][ref], rec["face_boxes"][ref], native)


def clip_frames(record, size: int | None) -> np.ndarray:
    """Every frame (N, S, S, 3) uint8 of a clip, as `ClipWindow` renders / decodes its windows."""
    if isinstance(record, syn.Clip):
        return sf.render(record.identity, record.states, size or record.size)
    from emotivetalk_jax.data.video import decode_jpeg

    n = min(len(record["frames"]), int(record["num_frames"]))
    size = size or int(record["lip_mask"].shape[0])
    return np.stack([_resize(decode_jpeg(record["frames"][i]), size) for i in range(n)])


def clip_landmarks(record, size: int | None) -> np.ndarray:
    """Every frame's landmarks (N, 68, 2) float32 of a clip at `size`, as `clip_frames` gives its frames."""
    if isinstance(record, syn.Clip):
        return record.landmarks(size=size or record.size)
    n = min(len(record["frames"]), int(record["num_frames"]))
    native = int(record["lip_mask"].shape[0])
    return (np.asarray(record["landmarks"], np.float32)[:n] * ((size or native) / native)).astype(np.float32)


def shard_options(shard: tuple[int, int] | None = None):
    """grain shard options: explicit (index, count), or one shard per JAX process."""
    if shard is None:
        return grain.sharding.ShardByJaxProcess(drop_remainder=True)
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard index must be in [0, {count}), got {index}")
    return grain.sharding.ShardOptions(shard_index=index, shard_count=count, drop_remainder=True)


def make_loader(source, *, frames: int = 16, size: int | None = 64, batch_size: int = 4, seed: int = 0,
                shard: tuple[int, int] | None = None, worker_count: int = 0, num_epochs: int | None = None,
                shuffle: bool = True, mask_sizes: Sequence[int] = (), audio_context: int = 2,
                drop_remainder: bool = True) -> grain.DataLoader:
    """A grain DataLoader of batched windows over `source` (see the module docstring)."""
    if frames < 1 or batch_size < 1:
        raise ValueError(f"frames and batch_size must be >= 1, got {frames}, {batch_size}")
    if worker_count > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
    sampler = grain.samplers.IndexSampler(len(source), shard_options=shard_options(shard), shuffle=shuffle,
                                          num_epochs=num_epochs, seed=seed)
    ops = [ClipWindow(frames=frames, size=size, mask_sizes=tuple(mask_sizes), audio_context=audio_context),
           grain.transforms.Batch(batch_size, drop_remainder=drop_remainder)]
    return grain.DataLoader(data_source=source, sampler=sampler, operations=ops, worker_count=worker_count)


def synthetic_loader(num_clips: int = 1000, split: str = "train", data_seed: int = 0,
                     config: syn.SynthConfig | None = None, **kw) -> grain.DataLoader:
    return make_loader(SyntheticClips(data_seed, split, num_clips, config), **kw)


def prepared_loader(out_dir: str | Path, split: str = "train", **kw) -> grain.DataLoader:
    return make_loader(PreparedClips(out_dir, split), **kw)
