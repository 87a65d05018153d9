"""grain pipelines: checkpointable iterator state, disjoint shards covering the split,
worker processes, the prepared-dataset source, and windows without pixels (stage 2's cached
path)."""

import numpy as np
import pytest

from emotivetalk_jax.data import synthetic_face as sf
from emotivetalk_jax.data.pipeline import ClipWindow, PreparedClips, SyntheticClips, make_loader
from emotivetalk_jax.data.synthetic import SynthConfig

CFG = SynthConfig(min_seconds=1.0, max_seconds=1.4)


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_restored_state_gives_identical_next_batches():
    ld = make_loader(SyntheticClips(0, "train", 10, CFG), frames=4, size=16, batch_size=2, seed=3, shard=(0, 1),
                     mask_sizes=(4, 2))
    it = iter(ld)
    next(it)
    state = it.get_state()
    want = [next(it) for _ in range(3)]  # crosses the epoch boundary (5 batches per epoch)
    it2 = iter(ld)
    it2.set_state(state)
    got = [next(it2) for _ in range(3)]
    assert all(_same(a, b) for a, b in zip(want, got))
    b = want[0]
    assert b["frames"].shape == (2, 4, 16, 16, 3) and b["reference"].shape == (2, 16, 16, 3)
    assert b["audio"].shape == (2, 640 * (4 + 2 * 2))
    assert b["mask_lip_4"].shape == (2, 4, 4, 1) and b["mask_face_2"].shape == (2, 2, 2, 1)
    assert b["opening"].shape == (2, 4) and b["expression"].shape == (2, 4, 4)


def test_audio_window_is_aligned_with_frames():
    src = SyntheticClips(0, "train", 4, CFG)
    ld = make_loader(src, frames=5, size=16, batch_size=1, seed=0, shard=(0, 1), audio_context=0)
    b = next(iter(ld))
    clip = src[int(b["clip"][0])]
    s = int(b["start"][0])
    np.testing.assert_array_equal(b["audio"][0], clip.audio_window(s, s + 5))
    np.testing.assert_array_equal(b["opening"][0], clip.states[s : s + 5, 0])


def _epoch_clips(shard, workers=0, n=11):
    ld = make_loader(SyntheticClips(0, "train", n, CFG), frames=2, size=16, batch_size=1, seed=5, shard=shard,
                     num_epochs=1, worker_count=workers)
    return [int(b["clip"][0]) for b in ld]


def test_two_processes_see_disjoint_data_covering_the_split():
    a, b = _epoch_clips((0, 2), n=10), _epoch_clips((1, 2), n=10)
    assert set(a).isdisjoint(b)
    assert sorted(a + b) == list(range(10))


@pytest.mark.slow
def test_worker_processes_give_the_same_data():
    assert _epoch_clips((0, 1), workers=2, n=6) == _epoch_clips((0, 1), workers=0, n=6)


def test_prepared_source(tmp_path):
    from emotivetalk_jax.data.prepare import PrepareConfig, prepare_main
    from emotivetalk_jax.data.synthetic import synth_main

    synth_main(tmp_path / "v", 2, seed=2, size=64, progress=False, config=CFG)
    prepare_main(tmp_path / "v", tmp_path / "p", PrepareConfig(size=64, audio_features="mel"), workers=1,
                 progress=False)
    src = PreparedClips(tmp_path / "p", "train")
    ld = make_loader(src, frames=4, size=32, batch_size=1, seed=0, shard=(0, 1), mask_sizes=(4,))
    b = next(iter(ld))
    assert b["frames"].shape == (1, 4, 32, 32, 3) and b["landmarks"].shape == (1, 4, 68, 2)
    assert b["audio_features"].shape == (1, 4, 4, 80)
    assert b["mask_lip_4"].sum() > 0
    _check_without_pixels(src[0], 32)


def _check_without_pixels(record, size):
    """`pixels=False` (stage 2 reading frozen outputs) leaves out frames and landmarks and
    changes nothing else: the same window, reference and masks from the same rng."""
    kw = dict(frames=4, size=size, mask_sizes=(4,), reference_neutral=0.5)
    for seed in range(4):  # both references: the neutral portrait and another frame
        full = ClipWindow(**kw).random_map(record, np.random.default_rng(seed))
        lean = ClipWindow(**kw, pixels=False).random_map(record, np.random.default_rng(seed))
        assert set(full) - set(lean) == {"frames", "landmarks"}
        assert _same(lean, {k: full[k] for k in lean})


def test_window_without_pixels_and_cached_portrait():
    src = SyntheticClips(0, "train", 2, CFG)
    _check_without_pixels(src[0], 16)
    clip = src[1]
    first = clip.portrait(16)
    first[:] = 0  # callers get a copy: the cached portrait is not theirs to change
    state = sf.neutral_state(1)
    assert np.array_equal(clip.portrait(16), sf.render(clip.identity, state, 16)[0])
    assert np.array_equal(clip.portrait_landmarks(16), sf.landmarks(clip.identity, state[0], 16))
