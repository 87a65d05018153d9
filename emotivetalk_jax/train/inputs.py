"""Training input pipeline: one global example order, sliced per process.

Example k of the global stream is clip `shuffle(seed)[k mod n]` (reshuffled every epoch),
cut into a window by `data.pipeline.ClipWindow` with a per-example rng that depends only on
k. Global batch s holds examples [s G, (s + 1) G); process p of P loads rows
[p G / P, (p + 1) G / P) of it, which is exactly where `jax.make_array_from_process_local_data`
puts them. So the data a step sees does not depend on the number of hosts, and the grain
iterator state (the next local index) restores it exactly after preemption.
"""

from __future__ import annotations

import grain

from emotivetalk_jax.data.pipeline import ClipWindow, PreparedClips, SyntheticClips, clip_frames, clip_landmarks
from emotivetalk_jax.data.synthetic import domain_config

KEEP = ("frames", "reference", "audio", "emotion", "landmarks", "reference_landmarks")  # emotion: () int32, -1 unlabelled


class _ProcessRows(grain.MapDataset):
    """Local element i of process p -> global element (i // b) * b * P + p * b + i % b."""

    def __init__(self, parent: grain.MapDataset, process: int, processes: int, per_process: int):
        super().__init__(parent)
        self._p, self._n, self._b = process, processes, per_process

    def __len__(self) -> int:
        return len(self._parent) // self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.slice(i)
        return self._parent[(i // self._b) * self._b * self._n + self._p * self._b + i % self._b]

    def __str__(self) -> str:
        return f"ProcessRows(process={self._p}, processes={self._n}, per_process={self._b})"


def _select(keys):
    def f(ex):
        return {k: ex[k] for k in keys}

    return f


def make_source(data_cfg):
    """The training split of `data_cfg.source` ('synthetic' | 'prepared')."""
    if data_cfg.source == "synthetic":
        config = domain_config(float(data_cfg.get("head_motion", 1.0)), bool(data_cfg.get("moving_heads", False)))
        return SyntheticClips(int(data_cfg.data_seed), "train", int(data_cfg.num_clips), config)
    if data_cfg.source == "prepared":
        return PreparedClips(data_cfg.path, "train")
    raise ValueError(f"unknown data source {data_cfg.source!r}; choose synthetic or prepared")


def make_dataset(data_cfg, spec: dict, *, batch_size: int, seed: int, process: int = 0,
                 processes: int = 1, audio_encoder=None, frozen_outputs=None,
                 cache_dir=None) -> grain.IterDataset:
    """Per-process batches (batch_size / processes rows) of the global stream.

    `data_cfg`: source ('synthetic' | 'prepared'), path, num_clips, data_seed, worker_count (processes),
    threads and prefetch (batches read ahead), reference_neutral, head_motion and moving_heads (synthetic);
    `spec`: frames, size, mask_sizes, audio_context, and optionally labels (the synthetic
    window's per-frame labels to keep, e.g. "expression") (from the stage).
    `audio_encoder`: the frozen encoder whose whole-utterance features every clip gets once
    (`data.audio_cache.source_features`, cached in `cache_dir`); batches then carry
    `frame_features`.
    `frozen_outputs`: a stage's `data.frozen_cache.FrozenOutputs` (needs `audio_encoder`): its
    per-clip arrays, computed once (`source_outputs`, cached in `cache_dir`), are cut into every
    window as `frozen_<name>`.
    """
    if batch_size % processes:
        raise ValueError(f"global batch {batch_size} does not divide over {processes} processes")
    source = make_source(data_cfg)
    features = None
    if audio_encoder is not None:
        from emotivetalk_jax.data.audio_cache import source_features

        features = source_features(audio_encoder, source, cache_dir=cache_dir if process == 0 else None)
    frozen = None
    if frozen_outputs is not None:
        from emotivetalk_jax.data.frozen_cache import source_outputs

        if features is None:
            raise ValueError("frozen_outputs reads the clips' audio features: pass the stage's audio_encoder too")
        frozen = source_outputs(frozen_outputs, source, features, clip_frames=clip_frames, clip_landmarks=clip_landmarks,
                                cache_dir=cache_dir if process == 0 else None)
    p_neutral = float(data_cfg.get("reference_neutral", 0.0))
    if not 0.0 <= p_neutral <= 1.0:
        raise ValueError(f"data.reference_neutral is a probability, got {p_neutral}")
    labels = tuple(spec.get("labels", ()))
    window = ClipWindow(frames=int(spec["frames"]), size=int(spec["size"]), mask_sizes=tuple(spec["mask_sizes"]),
                        audio_context=int(spec["audio_context"]), features=features, frozen=frozen,
                        reference_neutral=p_neutral, pixels=frozen is None,
                        pose=bool({"pose", "motion"} & set(labels)))
    keys = KEEP if window.pixels else tuple(k for k in KEEP if k not in ("frames", "landmarks"))
    keys += (("frame_features",) if features is not None else ())
    keys += tuple(f"frozen_{name}" for name in (frozen[0] if frozen else ()))
    keys += tuple(f"mask_{kind}_{s}" for s in spec["mask_sizes"] for kind in ("lip", "face"))
    keys += labels  # labels a stage learns from (stage reader: expression; stage 2's motion knob / pose: motion, pose)
    per = batch_size // processes
    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None).random_map(window, seed=seed)
    ds = _ProcessRows(ds.map(_select(keys)), process, processes, per).batch(per, drop_remainder=True)
    # grain's default reads 500 batches ahead on 16 threads: Python rendering that holds the GIL
    # and starves the step loop and orbax's save threads (a 0.8 MB checkpoint took 9 s to commit).
    threads, ahead = int(data_cfg.get("threads", 2)), int(data_cfg.get("prefetch", 2))
    if threads < 1 or ahead < 1:
        raise ValueError(f"data.threads and data.prefetch must be >= 1, got {threads} and {ahead}")
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=ahead))
    if int(data_cfg.worker_count) > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(num_workers=int(data_cfg.worker_count)))
    return it
