"""`emotivetalk prepare` on synthetic mp4s plus bad files: all good clips written, bad ones
reported with reasons, a second run reuses finished clips."""

import numpy as np

from emotivetalk_jax.data import video
from emotivetalk_jax.data.pose import pose_from_landmarks
from emotivetalk_jax.data.prepare import PrepareConfig, open_prepared, prepare_main
from emotivetalk_jax.data.synthetic import SynthConfig, SyntheticDomain, synth_main


def test_prepare_synthetic_folder(tmp_path):
    src = tmp_path / "videos"
    synth_main(src, 3, seed=1, size=64, progress=False, config=SynthConfig(min_seconds=1.2, max_seconds=1.6))
    (src / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    clip = SyntheticDomain(1).clip(9)
    video.write_mp4(src / "silent.mp4", clip.frames(0, 30, size=64))  # no audio
    video.write_mp4(src / "short.mp4", clip.frames(0, 10, size=64), audio=clip.audio_window(0, 10))
    out = tmp_path / "prepared"
    cfg = PrepareConfig(size=64, min_frames=25)
    rep = prepare_main(src, out, cfg, workers=2, progress=False)
    good = [f"train_1_{i:06d}" for i in range(3)]
    assert rep["prepared"] == good
    assert set(rep["skipped"]) == {"corrupt", "silent", "short"}
    assert rep["skipped"]["corrupt"].startswith("unreadable")
    assert rep["skipped"]["silent"].startswith("no audio")
    assert rep["skipped"]["short"].startswith("too short")
    assert set(rep["splits"]["train"]).isdisjoint(rep["splits"]["test"])
    assert sorted(rep["splits"]["train"] + rep["splits"]["test"]) == good
    assert not list(out.rglob("*.tmp"))

    again = prepare_main(src, out, cfg, workers=2, progress=False)
    assert again["newly_prepared"] == [] and again["reused"] == good

    total = 0
    for split in ("train", "test"):
        ds = open_prepared(out, split)
        total += len(ds)
        for i in range(len(ds)):
            ex = ds[i]
            n = int(ex["num_frames"])
            assert len(ex["frames"]) == n and ex["landmarks"].shape == (n, 68, 2)
            assert len(ex["audio"]) == 640 * n
            assert video.decode_jpeg(ex["frames"][0]).shape == (64, 64, 3)
            assert ex["lip_mask"].sum() > 0 and ex["face_mask"].sum() > ex["lip_mask"].sum()
            # the head pose of every frame relative to the first (issue 30), as data.pose fits it
            assert ex["pose"].shape == (n, 4) and ex["pose"].dtype == np.float32
            np.testing.assert_allclose(ex["pose"], pose_from_landmarks(ex["landmarks"], ex["landmarks"][0], 64),
                                       atol=1e-6)
            np.testing.assert_allclose(ex["pose"][0], [0, 0, 0, 1], atol=1e-5)
    assert total == 3
