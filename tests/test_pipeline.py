"""`emotivetalk generate` / `bench-synthetic` and the Python pipeline, on a random tiny bundle.

Everything runs in one process so the compiled programs are shared: a 32 px tiny bundle,
the packaged 2.4 s espeak-ng speech and the astronaut crop (a real photo), 2 DDIM steps.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from emotivetalk_jax import cli
from emotivetalk_jax.data.audio import num_video_frames

ASSETS = Path(__file__).resolve().parents[1] / "emotivetalk_jax" / "assets"
PORTRAIT, SPEECH = ASSETS / "portrait.png", ASSETS / "speech.wav"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from emotivetalk_jax.bundle import make_random_bundle

    return make_random_bundle(tmp_path_factory.mktemp("bundle") / "tiny", "tiny", 0, resolution=32, window=16,
                              overlap=4, steps=2, dicte_steps=2, decode_chunk=16)


def _frames(audio: Path) -> int:
    info = soundfile.info(str(audio))
    return num_video_frames(info.frames / info.samplerate)


def _probe(path: Path) -> dict:
    """Streams and frame count of an mp4, from the bundled ffmpeg."""
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    err = subprocess.run([exe, "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    return {"h264": bool(re.search(r"Video: h264", err)), "aac": bool(re.search(r"Audio: aac", err)),
            "fps25": " 25 fps" in err, "frames": frames}


def test_generate_cli_astronaut_espeak(bundle, tmp_path, capsys):
    """A real photo (the astronaut) + real speech (espeak-ng) -> H.264 + AAC, 25 fps, round(d * 25) frames."""
    out = tmp_path / "talk.mp4"
    rc = cli.main(["generate", "--portrait", str(PORTRAIT), "--audio", str(SPEECH), "--emotion", "happy",
                   "--checkpoint", str(bundle), "--seed", "1", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    n = _frames(SPEECH)
    assert summary["frames"] == n and summary["emotion"] == "happy"
    assert set(summary["seconds"]) >= {"portrait", "audio", "lip", "expression", "denoise", "decode", "write"}
    p = _probe(out)
    assert p == {"h264": True, "aac": True, "fps25": True, "frames": n}
    assert not list(tmp_path.glob(".*tmp*"))
    # issue 35: the video says it was generated, from which checkpoint, in a way `detect` checks
    assert summary["marks"] == {"label": True, "credential": "self-signed", "watermark": True}
    assert cli.main(["detect", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    ckpt = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    assert report["label"]["checkpoint_sha256"] == ckpt and report["label"]["ai_generated"] == "true"
    assert report["credential"]["status"] == "self-signed" and report["credential"]["generated"]
    assert report["credential"]["generation"]["checkpoint_sha256"] == ckpt


@pytest.fixture(scope="module")
def pipe(bundle):
    from emotivetalk_jax.pipeline import EmotiveTalkPipeline

    return EmotiveTalkPipeline.from_pretrained(bundle, progress=False)


def test_python_api_paste_back(pipe):
    from emotivetalk_jax.provenance import watermark

    wave, sr = soundfile.read(str(SPEECH), dtype="float32")
    r = pipe(str(PORTRAIT), wave, emotion=None, seed=0, paste=True)
    assert r.frames.shape == (_frames(SPEECH), 256, 256, 3) and r.frames.dtype == np.uint8
    assert r.info["portrait"]["faces"] == "detected"
    r2 = pipe(str(PORTRAIT), wave, emotion=None, seed=0, paste=True, mark=False)  # deterministic per seed
    np.testing.assert_array_equal(r.frames, watermark.embed(r2.frames))  # marked: over the pasted-back frames


def test_phone_photo_generates_as_shown(pipe, tmp_path):
    """Issue 34: the astronaut saved as a phone saves it (pixels stored sideways, EXIF orientation
    6; read as stored it had no face) generates the same video as the picture a viewer shows."""
    with Image.open(PORTRAIT) as im:
        upright = np.asarray(im.convert("RGB"))
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn the stored pixels 90 degrees clockwise to show them"
    phone = tmp_path / "IMG_0001.jpg"
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(phone, quality=92, exif=exif)
    with Image.open(phone) as im:
        shown = np.rot90(np.asarray(im.convert("RGB")), -1)  # what a viewer shows (JPEG: not exactly `upright`)
    assert shown.shape == upright.shape and np.abs(shown.astype(int) - upright).mean() < 3
    Image.fromarray(np.ascontiguousarray(shown)).save(tmp_path / "shown.png")
    wave, sr = soundfile.read(str(SPEECH), dtype="float32")
    a = pipe(str(phone), wave, seed=0)
    b = pipe(str(tmp_path / "shown.png"), wave, seed=0)
    assert a.info["portrait"]["faces"] == "detected"
    np.testing.assert_array_equal(a.frames, b.frames)


def _bad_inputs(tmp: Path, bundle: Path) -> dict[str, tuple[list[str], str]]:
    from PIL import Image

    not_image = tmp / "notes.png"
    not_image.write_text("not an image")
    no_face = tmp / "gradient.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 128, dtype=np.uint8)[None, :, None], (128, 1, 3))).save(no_face)
    empty = tmp / "empty.wav"
    soundfile.write(str(empty), np.zeros(0, np.float32), 16000)
    ok = ["--portrait", str(PORTRAIT), "--audio", str(SPEECH), "--checkpoint", str(bundle)]

    def args(**over):
        a = dict(zip(ok[::2], ok[1::2]))
        a.update({f"--{k.replace('_', '-')}": v for k, v in over.items()})
        return [x for kv in a.items() for x in kv]

    return {
        "missing portrait": (args(portrait=str(tmp / "nope.png")), "does not exist"),
        "unreadable portrait": (args(portrait=str(not_image)), "cannot read portrait"),
        "no face": (args(portrait=str(no_face)), "no face found"),
        "non-audio file": (args(audio=str(PORTRAIT)), "cannot decode audio"),
        "empty audio": (args(audio=str(empty)), "no audio samples"),
        "unknown emotion": (args(emotion="blorpy"), "happy, angry, sad, surprised, fearful, disgusted, worried, neutral"),
        "other variant": (args(variant="emotivetalk_512"), "variant 'tiny', not the requested 'emotivetalk_512'"),
        "not a bundle": (args(checkpoint=str(bundle / "ethd")), "not a pipeline checkpoint"),
        "motion without the knob": (args(motion="0.5"), "trained without the motion knob"),
        "pose without the condition": (args(pose_video=str(SPEECH)), "has no pose condition"),
    }


def test_bad_inputs_one_line_exit_2_no_output(bundle, tmp_path, capsys):
    cases = _bad_inputs(tmp_path, bundle)
    cases["unwritable output"] = (None, "cannot write the output")
    ok = ["--portrait", str(PORTRAIT), "--audio", str(SPEECH), "--checkpoint", str(bundle)]
    cases["signing cert without key"] = ([*ok, "--sign-cert", str(PORTRAIT)], "without its key")
    cases["signing cert not PEM"] = ([*ok, "--sign-cert", str(PORTRAIT), "--sign-key", str(SPEECH)],
                                     "not a PEM certificate chain")
    for name, (argv, needle) in cases.items():
        out = tmp_path / f"{name.replace(' ', '_')}.mp4"
        if argv is None:
            out = Path("/proc/emotivetalk_no_such_dir/out.mp4")
            argv = ["--portrait", str(PORTRAIT), "--audio", str(SPEECH), "--checkpoint", str(bundle)]
        rc = cli.main(["generate", *argv, "--out", str(out), "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2, name
        assert len(err) == 1 and err[0].startswith("emotivetalk: error: "), (name, err)
        assert needle in err[0], (name, err[0])
        assert not out.exists(), name
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*tmp*"))


def test_face_box_when_detection_fails(bundle, tmp_path, capsys):
    """A user face box replaces detection (here on a face-less image, so landmarks are dropped)."""
    from emotivetalk_jax.bundle import read_settings
    from emotivetalk_jax.data.portrait import prepare_portrait

    img = np.full((96, 80, 3), 180, np.uint8)
    p = prepare_portrait(img, read_settings(bundle).resolution, face_box=(20, 20, 60, 70))
    assert p.detail["faces"] == "user box" and p.image.shape == (32, 32, 3)
    assert (p.lip_box[2] > p.lip_box[0]) and (p.face_box[3] > p.face_box[1])


def test_bench_synthetic_json(bundle, capsys):
    rc = cli.main(["bench-synthetic", "--checkpoint", str(bundle), "--seed", "0", "--clips", "1",
                   "--frames", str(_frames(SPEECH)), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    for k in ("lip_sync_corr", "av_offset_frames", "emotion_accuracy", "identity_psnr", "settings"):
        assert k in out
    assert out["settings"]["clips"] == 1 and out["settings"]["split"] == "test"
    assert out["settings"]["mark"] is True  # it scores what users get: watermarked frames
    assert out["settings"]["frames"] == _frames(SPEECH)
    assert 0.0 <= out["emotion_accuracy"] <= 1.0 and out["identity_psnr"] > 0
    # the ceiling: the bundle VAE's own reconstruction of the ground truth (random weights: poor,
    # but a real PSNR), and the domain the bundle was trained on (a random bundle: the default)
    assert out["identity_psnr_ceiling"] > 0 and out["settings"]["head_motion"] == 1.0
    assert 0.0 <= out["emotion_accuracy_ceiling"] <= 1.0 and "lip_sync_corr_ceiling" in out
    # head pose read back from every generated frame; pose_corr only with a driving pose
    assert set(out["pose_std_ratio"]) == {"roll", "dx", "dy", "scale"} and "pose_corr" not in out
    assert out["settings"]["moving_heads"] is False and out["settings"]["motion"] is None


def test_motion_level_and_driving_pose_reach_the_backbone(pipe):
    """The motion knob sets SVD's motion bucket (127 x level; the constant without the knob) and a
    driving pose enters every guidance branch as a per-frame condition; a bundle without the
    knob or the pose guider refuses them in one line before any work."""
    import dataclasses

    import jax.numpy as jnp

    from emotivetalk_jax.data.pose import PoseError
    from emotivetalk_jax.data.portrait import prepare_portrait

    p = prepare_portrait(str(PORTRAIT), pipe.resolution)
    e, h = pipe.bundle.ethd.ethd_config, pipe.latent_size
    l_a, e_dri, e_ref = jnp.zeros((1, 5, e.lip_dim)), jnp.zeros((1, 5, e.expr_dim)), jnp.zeros((1, e.expr_dim))
    ref = jnp.zeros((1, h, h, 4))
    assert float(pipe.conditions(l_a, e_dri, e_ref, ref, p).cond.video["added_time_ids"][0, 1]) == 127.0
    saved = pipe.settings
    try:
        pipe.settings = dataclasses.replace(saved, motion_conditioning=True, motion_typical=0.3, lip_scale=2.0)
        pose = np.tile(np.float32([[2.0, 0.01, 0.0, 1.0]]), (5, 1))
        br = pipe.conditions(l_a, e_dri, e_ref, ref, p, motion=0.5, pose=pose)
        assert float(br.cond.video["added_time_ids"][0, 1]) == 63.5
        assert float(pipe.conditions(l_a, e_dri, e_ref, ref, p).cond.video["added_time_ids"][0, 1]) == 127.0
        for c in br:
            np.testing.assert_array_equal(c.frame["pose"][0], pose)
    finally:
        pipe.settings = saved
    wave, _ = soundfile.read(str(SPEECH), dtype="float32")
    with pytest.raises(PoseError, match="without the motion knob"):
        pipe(str(PORTRAIT), wave, motion=1.0)
    with pytest.raises(PoseError, match="no pose condition"):
        pipe(str(PORTRAIT), wave, pose=pose)


def test_bench_metrics_on_ground_truth():
    """The scorer itself: ground-truth video scores corr 1 at lag 0, and a 2-frame delay is found."""
    from emotivetalk_jax.data.synthetic import SyntheticDomain
    from emotivetalk_jax.eval.synthetic_bench import _measure, lag_correlations

    clip = SyntheticDomain(0).clip(0, "test")
    video = clip.frames(size=64)
    opening, emo = _measure(video, clip.identity)
    truth = clip.states[:, 0]
    lags = lag_correlations([opening], [truth])
    assert lags[0] > 0.95 and max(lags, key=lags.get) == 0
    delayed = np.concatenate([opening[:1].repeat(2), opening[:-2]])
    lags = lag_correlations([delayed], [truth])
    assert max(lags, key=lags.get) == 2
    assert np.bincount(emo[emo >= 0]).argmax() == clip.emotion_id


def test_speech_head_cli_into_a_bundle_and_emotion_from_speech(bundle, tmp_path, capsys):
    """`speech-head train` (a few utterances, a few steps) reports held-out accuracy and its
    confusion matrix, `speech-head add` puts it into a copy of the bundle (manifest rewritten),
    and `generate --emotion-from-speech` reads the emotion from the speech it animates."""
    import shutil

    from emotivetalk_jax.bundle import load_bundle, verify_bundle
    from emotivetalk_jax.emotion.keywords import KEYWORDS
    from emotivetalk_jax.provenance import NO_MARK_WARNING

    head = tmp_path / "head"
    rc = cli.main(["speech-head", "train", str(head), "--feature", "prosody", "--clips", "16", "--voice-seeds",
                   "2", "--heldout-clips", "8", "--val-clips", "8", "--steps", "20", "--eval-every", "10", "--hidden",
                   "16", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    assert list(out["confusion"]) == list(KEYWORDS) and sum(sum(r.values()) for r in out["confusion"].values()) == 8
    assert out["heldout_data"]["voices_also_in_training"] == 0 and out["train"]["utterances"] == 16
    report = json.loads((head / "report.json").read_text())
    assert [h["step"] for h in report["history"]] == [10, 20]
    val = report["validation"]  # the set settings are chosen on: another domain's held-out voices
    assert val["utterances"] == 8 and val["voices_also_in_training"] == 0 and "1000" in val["source"]
    assert report["history"][-1]["validation_accuracy"] == val["accuracy"] == out["validation_accuracy"]
    rc = cli.main(["speech-head", "eval", str(head), "--heldout-clips", "8"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["accuracy"] == out["heldout_accuracy"]

    ckpt = tmp_path / "ckpt"
    shutil.copytree(bundle, ckpt)
    assert cli.main(["speech-head", "add", str(head), str(ckpt)]) == 0
    capsys.readouterr()
    assert verify_bundle(ckpt, hashes=True)["components"]["speech_head"]["component"] == "speech_head"
    assert load_bundle(ckpt).speech_head.cfg.feature == "prosody"
    assert cli.main(["speech-head", "add", str(head), str(ckpt)]) == 2  # already there: --replace
    assert "already has a speech_head/" in capsys.readouterr().err

    rc = cli.main(["generate", "--portrait", str(PORTRAIT), "--audio", str(SPEECH), "--emotion-from-speech",
                   "--checkpoint", str(ckpt), "--steps", "1", "--out", str(tmp_path / "s.mp4"), "--quiet",
                   "--no-mark"])  # a research run (issue 35): a one-line warning, no marks
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.err.strip().splitlines() == [f"emotivetalk: warning: {NO_MARK_WARNING}"]
    summary = json.loads(captured.out)
    assert summary["emotion"] in KEYWORDS and abs(sum(summary["emotion_probs"].values()) - 1) < 1e-3
    assert max(summary["emotion_probs"], key=summary["emotion_probs"].get) == summary["emotion"]
    assert summary["marks"] == {"label": False, "credential": "absent", "watermark": False}
    assert cli.main(["detect", str(tmp_path / "s.mp4")]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["label"] is None and report["credential"]["status"] == "absent"
    assert not report["watermark"]["detected"] and not report["marked"]


def test_bench_emotion_sources(bundle, tmp_path):
    """Every bench source shows the clip's emotion from another held-out identity (image, video)
    or another voice (audio), and says how the emotion was chosen."""
    from flax import nnx

    from emotivetalk_jax.data.synthetic import SyntheticDomain
    from emotivetalk_jax.emotion.keywords import KEYWORDS
    from emotivetalk_jax.emotion.speech import SpeechEmotionHead, SpeechHeadConfig
    from emotivetalk_jax.eval.bench_sources import SOURCE_OFFSET, SOURCES, source_emotion
    from emotivetalk_jax.pipeline import EmotiveTalkPipeline

    pipe = EmotiveTalkPipeline.from_pretrained(bundle, progress=False)
    pipe.bundle.speech_head = SpeechEmotionHead(SpeechHeadConfig(in_dim=12, hidden=8, feature="prosody"),
                                                rngs=nnx.Rngs(0))
    domain = SyntheticDomain(0)
    clip = domain.clip(3, "test")
    for kind in SOURCES:
        emotion, how = source_emotion(pipe, domain, clip, 3, kind, 12, tmp_path)
        assert how["kind"] == kind and how["chosen"] in KEYWORDS, how
        if kind == "text":
            assert emotion == clip.emotion and how["method"] == "keyword"
            continue
        index = int(how["from"].rsplit("_", 1)[1])
        other = domain.clip(index, "test")
        assert index >= SOURCE_OFFSET and other.identity_id == how["identity"] != clip.identity_id
        if kind == "audio":
            assert other.emotion == clip.emotion and abs(sum(how["probs"].values()) - 1) < 1e-3
            assert emotion.keyword == how["chosen"] == max(how["probs"], key=how["probs"].get)
        else:
            assert how["method"].startswith("nearest codebook row") and len(how["distances"]) == len(KEYWORDS)
            assert (emotion.e_v.shape[0] == 12) if kind == "video" else emotion.e_cond is not None
