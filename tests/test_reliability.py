"""Reliability (issue 15): the CLI's bad-input matrix as one table, bundle integrity, clean
interrupts, `prepare`'s cache and machine-readable output.

Each matrix row is (name, argv, exit code, a substring of the single `emotivetalk: error:`
line, paths that must not exist afterwards). Every row runs in this process against one
random tiny bundle (and damaged copies of it) and fails before any model loads. The
interrupt tests run the CLI in a subprocess and signal it once its handlers are installed
(read from /proc/PID/status), then check the exit code, that stderr has no traceback and
that no temporary file or created folder is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile

from emotivetalk_jax import cli

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "emotivetalk_jax" / "assets"
PORTRAIT, SPEECH = ASSETS / "portrait.png", ASSETS / "speech.wav"
ENV = dict(os.environ, JAX_PLATFORMS="cpu")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from emotivetalk_jax.bundle import make_random_bundle

    return make_random_bundle(tmp_path_factory.mktemp("bundle") / "tiny", "tiny", 0, resolution=32, window=16,
                              overlap=4, steps=2, dicte_steps=2, decode_chunk=16)


def _data_file(bundle: Path, part: str = "ethd") -> str:
    d = bundle / part / "state" / "ocdbt.process_0" / "d"
    return str(sorted(d.iterdir())[0].relative_to(bundle))


def _damaged(ws: Path, bundle: Path) -> dict[str, Path]:
    """Copies of the bundle, each damaged one way."""
    from flax import nnx

    from emotivetalk_jax.convert.engine import random_params
    from emotivetalk_jax.convert.native import save_model
    from emotivetalk_jax.models.ethd import ETHD
    from emotivetalk_jax.models.ethd_variants import get_ethd_variant

    out = {}

    def copy(name):
        out[name] = ws / "ckpt" / name
        shutil.copytree(bundle, out[name])
        return out[name]

    data = _data_file(bundle)
    trunc = copy("truncated")
    for part in ("ethd", "vae"):
        with open(trunc / _data_file(bundle, part), "r+b") as f:
            f.truncate(10)
    (copy("missing_file") / data).unlink()
    raw = bytearray((bundle / data).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (copy("bitflip") / data).write_bytes(bytes(raw))
    (copy("bad_ethd_config") / "ethd" / "config.json").write_text("{not json")
    old = copy("old_bad_config")  # written before manifests, then damaged
    for m in old.rglob("manifest.json"):
        m.unlink()
    (old / "ethd" / "config.json").write_text("{not json")
    shutil.rmtree(copy("missing_part") / "vaid")
    (copy("bad_manifest") / "manifest.json").write_text("[")
    for name, variant in (("foreign", "demo"), ("swapped", "tiny")):  # an ETHD from another bundle swapped in
        shutil.rmtree(copy(name) / "ethd")
        ev = get_ethd_variant(variant)
        ethd = random_params(nnx.eval_shape(lambda: ETHD.from_svd_config(dict(ev.svd.unet), ev.ethd,
                                                                         rngs=nnx.Rngs(0))), 1)
        save_model(ethd, out[name] / "ethd", "ethd", variant=variant)
    (ws / "ckpt" / "empty").mkdir()
    bad_cfg = ws / "ckpt" / "bad_config"
    bad_cfg.mkdir()
    (bad_cfg / "config.json").write_text("{")
    out.update(empty=ws / "ckpt" / "empty", bad_config=bad_cfg)
    return out


def _inputs(ws: Path) -> SimpleNamespace:
    """Bad input files of every kind."""
    from PIL import Image

    d = ws / "in"
    d.mkdir()
    f = SimpleNamespace(folder=d / "a_folder", text=d / "notes.png", gradient=d / "gradient.png", file=d / "file.txt")
    f.folder.mkdir()
    f.text.write_text("not an image")
    f.file.write_text("a file")
    Image.fromarray(np.tile(np.linspace(0, 255, 128, dtype=np.uint8)[None, :, None], (128, 1, 3))).save(f.gradient)
    rng = np.random.default_rng(0)
    speech = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    for name, wave, subtype in (("empty", np.zeros(0, np.float32), "PCM_16"),
                                ("silent", np.zeros(16000, np.float32), "PCM_16"),
                                ("short", speech[:160], "PCM_16"),
                                ("nan", np.where(np.arange(16000) // 100 == 7, np.nan, speech), "FLOAT"),
                                ("inf", np.where(np.arange(16000) == 12345, np.inf, speech), "FLOAT")):
        setattr(f, name, d / f"{name}.wav")
        soundfile.write(str(getattr(f, name)), wave.astype(np.float32), 16000, subtype=subtype)
    f.long = d / "long.wav"  # 601 s of silence: refused from the header, never decoded
    soundfile.write(str(f.long), np.zeros(601 * 16000, np.int16), 16000, subtype="PCM_16")
    f.pickles = d / "pickles"
    f.pickles.mkdir()
    (f.pickles / "codebook.pkl").write_bytes(b"\x80\x04N.")
    f.svd_pickle = d / "svd_pickle"
    f.svd_pickle.mkdir()
    (f.svd_pickle / "config.json").write_text(json.dumps({"_class_name": "UNetSpatioTemporalConditionModel"}))
    (f.svd_pickle / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04N.")
    f.hf_pickle = d / "hf_pickle"
    f.hf_pickle.mkdir()
    from emotivetalk_jax.models.variants import TINY_AUDIO

    (f.hf_pickle / "config.json").write_text(json.dumps({**TINY_AUDIO, "architectures": ["Wav2Vec2Model"]}))
    (f.hf_pickle / "pytorch_model.bin").write_bytes(b"\x80\x04N.")
    f.videos = d / "videos"
    f.videos.mkdir()
    (f.videos / "clip.mp4").write_bytes(rng.bytes(1000))
    f.empty_dir = d / "empty_dir"
    f.empty_dir.mkdir()
    f.bad_cache = d / "bad_cache"
    (f.bad_cache / ".work").mkdir(parents=True)
    (f.bad_cache / ".work" / "config.json").write_text("{")
    f.workdir = d / "workdir_no_ckpt"
    f.workdir.mkdir()
    # inputs an output may not replace: speech taken from a video, a portrait, links to them
    from emotivetalk_jax.data.video import write_mp4

    f.talk = write_mp4(d / "talk.mp4", np.zeros((2, 16, 16, 3), np.uint8), audio=speech[:8000])
    f.face = d / "face.png"
    shutil.copyfile(PORTRAIT, f.face)
    f.talk_link, f.talk_hard, f.dir_link = d / "link.mp4", d / "hard.mp4", ws / "in_link"
    f.talk_link.symlink_to(f.talk)
    os.link(f.talk, f.talk_hard)
    f.dir_link.symlink_to(d, target_is_directory=True)
    f.hidden = d / ".clip.tmp.mp4"  # the temporary file `--out clip.mp4` writes first
    shutil.copyfile(f.talk, f.hidden)
    f.heic = d / "IMG_0001.HEIC"  # an iPhone photo's header
    f.heic.write_bytes(b"\0\0\0\x18ftypheic" + bytes(200))
    return f


def _matrix(ws: Path, bundle: Path) -> list[tuple]:
    f, c = _inputs(ws), _damaged(ws, bundle)
    new = ws / "out"  # every output goes to a folder that does not exist: none may be created

    def gen(name, **over):
        a = {"portrait": str(PORTRAIT), "audio": str(SPEECH), "checkpoint": str(bundle),
             "out": str(new / name / "x.mp4")}
        a.update({k.replace("_", "-"): v for k, v in over.items() if v is not None})
        flags = [x for k, v in a.items() if v is not True for x in (f"--{k}", str(v))]
        return ["generate", *flags, *[f"--{k}" for k, v in a.items() if v is True], "--quiet"]

    rows = [
        # name, argv, exit code, needle (None: argv's own), paths that must not exist
        ("missing portrait", gen("p1", portrait=ws / "nope.png"), "portrait", "does not exist"),
        ("portrait is a folder", gen("p2", portrait=f.folder), "portrait", "is a folder, not a file"),
        ("unreadable portrait", gen("p3", portrait=f.text), "portrait", "cannot read portrait"),
        ("no face", gen("p4", portrait=f.gradient), "portrait", "no face found"),
        ("face box not four numbers", gen("p5", face_box="1,2,3"), "face box", "must be four numbers"),
        ("face box empty", gen("p6", face_box="10,10,5,5"), "face box", "is empty"),
        ("face box NaN", gen("p7", face_box="nan,0,10,10"), "face box", "must be four numbers"),
        ("face box outside the image", gen("p8", portrait=f.gradient, face_box="0,0,9999,9999"), "face box",
         "face box must be"),
        ("missing audio", gen("a1", audio=ws / "nope.wav"), "audio", "does not exist"),
        ("audio is a folder", gen("a2", audio=f.folder), "audio", "is a folder, not a file"),
        ("non-audio file", gen("a3", audio=PORTRAIT), "audio", "cannot decode audio"),
        ("empty audio", gen("a4", audio=f.empty), "audio", "no audio samples"),
        ("too-short audio", gen("a5", audio=f.short), "audio", "shorter than one video frame"),
        ("NaN audio", gen("a6", audio=f.nan), "audio", "100 NaN / Inf samples"),
        ("Inf audio", gen("a7", audio=f.inf), "audio", "1 NaN / Inf samples (the first at 0.772 s)"),
        ("too-long audio", gen("a8", audio=f.long), "audio", "over the 600 s limit: generation keeps every frame"),
        ("unknown emotion", gen("e1", emotion="blorpy"), "emotion",
         "happy, angry, sad, surprised, fearful, disgusted, worried, neutral"),
        ("missing emotion image", gen("e2", emotion_image=ws / "nope.png"), "emotion", "emotion image"),
        ("emotion image is a folder", gen("e3", emotion_image=f.folder), "emotion", "is a folder, not a file"),
        ("unreadable emotion image", gen("e4", emotion_image=f.text), "emotion", "cannot read emotion image"),
        ("missing emotion audio", gen("e5", emotion_audio="missing.wav"), "emotion",
         "emotion audio missing.wav does not exist"),
        ("NaN emotion audio", gen("e6", emotion_audio=f.nan), "emotion",
         "has 100 NaN / Inf samples (the first at 0.044 s)"),
        ("missing emotion video", gen("e7", emotion_video=ws / "nope.mp4"), "emotion", "emotion video"),
        # speech-emotion: no speech, no head (the tiny bundle has none), two sources at once
        ("silent emotion audio", gen("s1", emotion_audio=f.silent), "emotion",
         "silent.wav holds no speech (its loudest 20 ms is at -200 dBFS"),
        ("empty emotion audio", gen("s2", emotion_audio=f.empty), "emotion", "empty.wav contains no audio samples"),
        ("emotion audio, checkpoint without a head", gen("s3", emotion_audio=SPEECH), "emotion",
         "has no speech-emotion head (speech_head/), so --emotion-audio cannot read an emotion"),
        ("emotion from speech, checkpoint without a head", gen("s4", emotion_from_speech=True), "emotion",
         "so --emotion-from-speech cannot read an emotion"),
        ("emotion from silent speech", gen("s5", audio=f.silent, emotion_from_speech=True), "emotion",
         "silent.wav (for --emotion-from-speech) holds no speech"),
        ("emotion from speech and text", gen("s6", emotion="happy", emotion_from_speech=True), "argparse",
         "not allowed with argument"),
        ("speech-head: output is a file", ["speech-head", "train", str(f.file)], "speech", "is a file, not a folder"),
        ("speech-head add: missing head", ["speech-head", "add", str(ws / "nope"), str(bundle)], "speech",
         "does not exist"),
        ("missing codebook", gen("e8", codebook=ws / "nope"), "codebook", "does not exist"),
        ("codebook is a file", gen("e9", codebook=f.file), "codebook", "is a file, not a folder"),
        ("speech head is a file", gen("e10", speech_head=f.file), "speech", "is a file, not a folder"),
        ("speech-head train: validation on the held-out voices", ["speech-head", "train", str(new / "sh1"),
                                                                  "--val-seed", "0"], "speech",
         "--val-seed 0 is --data-seed, whose held-out voices score the head; validate on another domain's"),
        ("pickled codebook", gen("e11", emotion="happy", codebook=f.pickles), "codebook", "no codebook at"),
        ("bogus variant", gen("v1", variant="bogus"), "variant",
         "choose one of tiny, demo, emotivetalk_512, emotivetalk_1024"),
        ("other variant", gen("v2", variant="emotivetalk_512"), "variant", "not the requested 'emotivetalk_512'"),
        ("seed too large", gen("n1", seed="99999999999999999999999"), "seed", "--seed must be in 0 .. 4294967295"),
        ("negative seed", gen("n2", seed=-1), "seed", "--seed must be in 0 .."),
        ("seed not a number", gen("n3", seed="abc"), "seed", "invalid int value"),
        ("zero steps", gen("n4", steps=0), "steps", "--steps must be in 1 .. 1000"),
        ("too many steps", gen("n5", steps=100000), "steps", "--steps must be in 1 .. 1000"),
        ("output is a folder", gen("o1", out=f.folder), "out", "is a folder"),
        ("output not mp4", gen("o2", out=new / "o2" / "x.avi"), "out", "must end in .mp4"),
        ("output under a file", gen("o3", out=f.file / "x.mp4"), "out", "is a file, not a folder"),
        ("unwritable output", gen("o4", out="/proc/emotivetalk_no_such_dir/x.mp4"), "out", "cannot write"),
        ("missing checkpoint", gen("c1", checkpoint=ws / "nope"), "ckpt", "does not exist"),
        ("checkpoint is a file", gen("c2", checkpoint=f.file), "ckpt", "is a file, not a folder"),
        ("component, not a bundle", gen("c3", checkpoint=bundle / "ethd"), "ckpt", "not a pipeline checkpoint"),
        ("empty checkpoint folder", gen("c4", checkpoint=c["empty"]), "ckpt", "no config.json"),
        ("corrupt config.json", gen("c5", checkpoint=c["bad_config"]), "ckpt", "config.json is not readable JSON"),
        ("corrupt ethd/config.json", gen("c6", checkpoint=c["bad_ethd_config"]), "ckpt", "ethd/config.json has"),
        ("corrupt ethd/config.json, no manifest", gen("c7", checkpoint=c["old_bad_config"]), "ckpt",
         "ethd/config.json is not readable JSON"),
        ("truncated weights", gen("c8", checkpoint=c["truncated"]), "ckpt", "bytes, its manifest says"),
        ("missing weights file", gen("c9", checkpoint=c["missing_file"]), "ckpt", "is missing"),
        ("foreign component", gen("c10", checkpoint=c["foreign"]), "ckpt", "ethd is from a 'demo' checkpoint"),
        ("component of another bundle", gen("c14", checkpoint=c["swapped"]), "ckpt",
         "ethd holds other files than the manifest lists"),
        ("missing part", gen("c11", checkpoint=c["missing_part"]), "ckpt", "lacks vaid/"),
        ("damaged weights (--verify)", gen("c12", checkpoint=c["bitflip"], verify=True), "ckpt",
         "does not match its sha256"),
        ("damaged manifest", gen("c13", checkpoint=c["bad_manifest"]), "ckpt", "manifest.json is damaged"),
        # the output may not be an input (issue 34): refused before any work, the input untouched
        ("output is the audio input", gen("i1", audio=f.talk, out=f.talk), "out",
         f"the output {f.talk} is the audio itself; writing there would overwrite your file: choose another path"),
        ("output is the audio, spelled with ..", gen("i2", audio=f.talk, out=f"{f.talk.parent}/../in/talk.mp4"),
         "out", "is the audio"),
        ("output is a link to the audio", gen("i3", audio=f.talk, out=f.talk_link), "out",
         "is the audio " + str(f.talk) + " (through a link)"),
        ("output is a hard link to the audio", gen("i4", audio=f.talk, out=f.talk_hard), "out", "is the audio"),
        ("output in a linked folder is the audio", gen("i5", audio=f.talk, out=f.dir_link / "talk.mp4"), "out",
         "is the audio"),
        ("output is the portrait", gen("i6", portrait=f.face, out=f.face), "out", "is the portrait"),
        ("output is the emotion video", gen("i7", emotion_video=f.talk, out=f.talk), "out", "is the emotion video"),
        ("output's temporary file is the audio", gen("i8", audio=f.hidden, out=f.hidden.parent / "clip.mp4"), "out",
         "the output's temporary file"),
        ("prepare: OUT is IN", ["prepare", str(f.videos), str(f.videos)], "prepare", "is the video folder"),
        ("prepare: OUT holds IN", ["prepare", str(f.videos), str(f.videos.parent)], "prepare",
         "holds the video folder"),
        ("convert: output is the source", ["convert", "svd", str(f.svd_pickle), str(f.svd_pickle)], "convert",
         "is the source"),
        ("convert: output holds the source", ["convert", "audio", str(f.hf_pickle), str(f.hf_pickle.parent)],
         "convert", "holds the source"),
        ("convert export: output is the checkpoint", ["convert", "export", str(bundle / "vae"), str(bundle / "vae")],
         "convert", "is the checkpoint"),
        ("export-bundle: output is the workdir", ["export-bundle", str(f.workdir), str(f.workdir)], "eb",
         "is the ethd workdir"),
        ("codebook: output is the images", ["codebook", "build", str(f.folder), str(f.folder), "--checkpoint",
                                            str(bundle / "face_encoders")], "codebook", "is the images folder"),
        # user text quoted at a readable length; a phone's HEIF photo named as such
        ("unknown 20,000-character emotion", gen("e12", emotion="x" * 20000), "emotion",
         "'... (20,000 characters); use one of: happy"),
        ("20,000-digit seed", gen("n6", seed="9" * 20000), "seed", "invalid int value"),
        ("20,000-character face box", gen("p9", face_box="1," * 10000), "face box", "(20,000 characters)"),
        ("10,000-character variant", gen("v3", variant="v" * 10000), "variant", "(10,000 characters) is not a variant"),
        ("3,000-character portrait name", gen("p10", portrait=ws / ("a" * 3000 + ".png")), "portrait",
         "File name too long"),
        ("HEIF portrait", gen("p11", portrait=f.heic), "portrait", "IMG_0001.HEIC"),
        ("required flag missing", ["generate", "--audio", str(SPEECH), "--out", str(new / "r1" / "x.mp4")], "argparse",
         "the following arguments are required: --portrait"),
        # prepare
        ("prepare: OUT is a file", ["prepare", str(f.videos), str(f.file)], "prepare", "is a file, not a folder"),
        ("prepare: OUT under a file", ["prepare", str(f.videos), str(f.file / "out")], "prepare", "is a file"),
        ("prepare: missing IN", ["prepare", str(ws / "nope"), str(new / "pr1")], "prepare", "does not exist"),
        ("prepare: IN is a file", ["prepare", str(f.file), str(new / "pr2")], "prepare", "is a file, not a folder"),
        ("prepare: no videos", ["prepare", str(f.empty_dir), str(new / "pr3")], "prepare", "no video files"),
        ("prepare: odd size", ["prepare", str(f.videos), str(new / "pr4"), "--size", "15"], "prepare", "--size"),
        ("prepare: zero min frames", ["prepare", str(f.videos), str(new / "pr5"), "--min-frames", "0"], "prepare",
         "--min-frames must be"),
        ("prepare: max < min frames", ["prepare", str(f.videos), str(new / "pr6"), "--max-frames", "3"], "prepare",
         "--max-frames must be"),
        ("prepare: zero workers", ["prepare", str(f.videos), str(new / "pr7"), "--workers", "0"], "prepare",
         "--workers must be"),
        ("prepare: test fraction", ["prepare", str(f.videos), str(new / "pr8"), "--test-fraction", "1.5"], "prepare",
         "--test-fraction"),
        ("prepare: crop scale", ["prepare", str(f.videos), str(new / "pr9"), "--crop-scale", "0"], "prepare",
         "--crop-scale must be"),
        ("prepare: damaged cache settings", ["prepare", str(f.videos), str(f.bad_cache)], "prepare",
         "config.json are damaged"),
        ("prepare: nothing usable", ["prepare", str(f.videos), str(new / "pr10"), "--workers", "1", "--no-progress"],
         "prepare", "no clip could be prepared"),
        # convert
        ("convert: missing source", ["convert", "svd", str(ws / "nope"), str(new / "cv1")], "convert",
         "does not exist"),
        ("convert: pickled diffusers weights", ["convert", "svd", str(f.svd_pickle), str(new / "cv2")], "convert",
         "pickles can run code"),
        ("convert: pickled HF weights", ["convert", "audio", str(f.hf_pickle), str(new / "cv3")], "convert",
         "pickles can run code"),
        ("convert: output is a file", ["convert", "svd", str(f.svd_pickle), str(f.file)], "convert",
         "is a file, not a folder"),
        ("convert export: missing checkpoint", ["convert", "export", str(ws / "nope"), str(new / "cv4")], "convert",
         "does not exist"),
        ("convert export: truncated checkpoint", ["convert", "export", str(c["truncated"] / "vae"),
                                                  str(new / "cv5")], "convert", "bytes, its manifest says"),
        ("convert export: pickles only", ["convert", "export", str(f.pickles), str(new / "cv6")], "convert",
         "holds no emotivetalk_jax checkpoint"),
        # train
        ("train: workdir is a file", ["train", "--config", "configs/train.py:stage=vaid,variant=tiny", "--workdir",
                                      str(f.file)], "train", "--workdir"),
        ("train: missing config", ["train", "--config", str(ws / "nope.py"), "--workdir", str(new / "t1")], "train",
         "does not exist"),
        ("train: config is a folder", ["train", "--config", str(f.folder), "--workdir", str(new / "t2")], "train",
         "is a folder, not a file"),
        # other commands
        ("random-bundle: bogus variant", ["random-bundle", str(new / "rb1"), "--variant", "bogus"], "rb",
         "choose one of tiny, demo"),
        ("random-bundle: output not empty", ["random-bundle", str(f.videos)], "rb", "exists and is not empty"),
        ("random-bundle: bad seed", ["random-bundle", str(new / "rb2"), "--seed", "-5"], "rb", "--seed must be"),
        ("random-bundle: bad resolution", ["random-bundle", str(new / "rb3"), "--resolution", "0"], "rb",
         "--resolution must be"),
        ("info: bogus variant", ["info", "--variant", "bogus"], "info", "choose one of tiny, demo"),
        ("bench: missing checkpoint", ["bench-synthetic", "--checkpoint", str(ws / "nope")], "bench",
         "does not exist"),
        ("bench: zero clips", ["bench-synthetic", "--checkpoint", str(bundle), "--clips", "0"], "bench",
         "--clips must be"),
        ("bench: damaged weights (--verify)", ["bench-synthetic", "--checkpoint", str(c["bitflip"]), "--verify"],
         "bench", "does not match its sha256"),
        ("forward: missing checkpoint", ["forward", str(ws / "nope")], "forward", "does not exist"),
        ("synth: zero clips", ["synth", str(new / "sy1"), "--clips", "0"], "synth", "--clips must be"),
        ("synth: output is a file", ["synth", str(f.file)], "synth", "is a file, not a folder"),
        ("export-bundle: missing workdir", ["export-bundle", str(ws / "nope"), str(new / "eb1")], "eb",
         "does not exist"),
        ("export-bundle: not a workdir", ["export-bundle", str(f.workdir), str(new / "eb2")], "eb",
         "not a training workdir"),
        ("codebook: missing images", ["codebook", "build", str(ws / "nope"), str(new / "cb1"), "--checkpoint",
                                      str(bundle / "face_encoders")], "codebook", "does not exist"),
    ]
    return [(name, argv, 2, needle) for name, argv, _, needle in rows]


def test_bad_input_matrix(bundle, tmp_path, capsys):
    ws = tmp_path / "ws"
    ws.mkdir()
    rows = _matrix(ws, bundle)
    assert len({r[0] for r in rows}) == len(rows) >= 60
    before = {p for p in ws.rglob("*")}
    given = _digests(ws)
    stale = ws / "in" / "a_folder"  # untouched: a folder given as a file
    failures = []
    for name, argv, code, needle in rows:
        rc = cli.main(argv)
        cap = capsys.readouterr()
        lines = cap.err.strip().splitlines()
        errors = [line for line in lines if line.startswith("emotivetalk: error: ")]
        ok = (rc == code and len(errors) == 1 and lines[-1] == errors[0] and needle in errors[0] and cap.out == ""
              and "Traceback" not in cap.err and len(errors[0]) <= 300)  # quoted text cut to a readable length
        if not ok:
            failures.append((name, rc, [line[:400] for line in lines[-3:]], cap.out[-200:]))
    assert not failures, "\n".join(map(str, failures))
    # nothing left behind: no output, no created folder, no temporary file; every input byte-identical
    assert not (ws / "out").exists()
    after = {p for p in ws.rglob("*")}
    assert after == before, sorted(map(str, after - before))[:5]
    assert _digests(ws) == given
    assert f"{(ws / 'in' / 'link.mp4').readlink()}" == str(ws / "in" / "talk.mp4")  # the link still a link
    assert stale.is_dir() and not list(stale.iterdir())


def _digests(root: Path) -> dict[str, str]:
    import hashlib

    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def test_bundle_manifest_roundtrip_and_old_bundles(bundle, tmp_path, recwarn):
    from emotivetalk_jax import manifest, validate
    from emotivetalk_jax.bundle import BundleError, load_bundle, save_bundle, verify_bundle

    meta = verify_bundle(bundle, hashes=True)
    files = {k: v for k, v in meta["files"].items()}
    assert "ethd/config.json" in files and "config.json" in files and "manifest.json" not in files
    assert all(len(v["sha256"]) == 64 and v["size"] > 0 for v in files.values())
    comps = meta["components"]
    assert comps["ethd"]["variant"] == "tiny" and comps["vaid"]["variant"] == "tiny"
    assert comps["ethd"]["shapes"] == manifest.read_manifest(bundle / "ethd")["components"]["."]["shapes"]
    assert not list(bundle.parent.glob(".*tmp*"))  # written through a temporary sibling, renamed
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    for m in old.rglob("manifest.json"):
        m.unlink()
    b = load_bundle(old)  # an older bundle still loads, with one notice
    notes = [str(w.message) for w in recwarn if issubclass(w.category, validate.InputWarning)]
    assert len(notes) == 1 and "has no manifest.json" in notes[0], notes
    with pytest.raises(FileExistsError):  # never over an existing bundle
        save_bundle(b, old)
    trunc = tmp_path / "trunc"
    shutil.copytree(bundle, trunc)
    with open(trunc / _data_file(bundle, "vae"), "r+b") as f:
        f.truncate(3)
    with pytest.raises(BundleError, match="truncated"):
        load_bundle(trunc)


def test_python_api_raises_typed_one_line_errors(bundle, tmp_path):
    """The pipeline's own checks: typed errors, one line each; soft problems are warnings."""
    from PIL import Image

    from emotivetalk_jax.data.audio import AudioError, NonFiniteAudioError
    from emotivetalk_jax.emotion import EmotionSource
    from emotivetalk_jax.pipeline import EmotiveTalkPipeline, GenerationError
    from emotivetalk_jax.validate import InputError, InputWarning, check_wave

    pipe = EmotiveTalkPipeline.from_pretrained(bundle, progress=False)
    wave = np.full(16000, 0.1, np.float32)
    bad = wave.copy()
    bad[3] = np.nan
    talk = tmp_path / "talk.mp4"
    talk.write_bytes(b"the user's video")
    cases = [
        (dict(audio=str(talk), out=talk), GenerationError, "the output " + str(talk) + " is the audio"),
        (dict(emotion=EmotionSource.video(talk), out=str(talk)), GenerationError, "is the emotion video"),
        (dict(audio=bad), NonFiniteAudioError, "NaN / Inf samples"),
        (dict(audio=np.zeros((2, 16000), np.float32)), AudioError, "mono"),
        (dict(seed=2**40), GenerationError, "seed must be in 0 .. 4294967295"),
        (dict(seed=10**5000), GenerationError, "seed must be in 0 .. 4294967295, got an integer of about 5,000 digits"),
        (dict(steps=0), GenerationError, "steps must be in 1 .. 1000"),
        (dict(out=tmp_path / "x.avi"), GenerationError, "must end in .mp4"),
        (dict(portrait=str(tmp_path)), ValueError, "is a folder, not a file"),
    ]
    for over, err, needle in cases:
        kw = dict(portrait=str(PORTRAIT), audio=wave) | over
        with pytest.raises(err) as e:
            pipe(kw.pop("portrait"), kw.pop("audio"), **kw)
        assert isinstance(e.value, InputError) or err is ValueError
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert talk.read_bytes() == b"the user's video"
    with pytest.warns(InputWarning, match="silent"):
        check_wave(np.zeros(16000, np.float32))
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(flat)
    with pytest.warns(InputWarning, match="no face found in the emotion image .*flat.png; using its centre square"):
        pipe.resolve_emotion(EmotionSource.image(flat), 10)


def test_interrupted_mp4_write_keeps_previous_output(tmp_path, monkeypatch):
    """An interrupt while ffmpeg writes: the temporary file goes, the previous video stays; a
    temporary file a kill -9 left is removed by the next run's output check."""
    from emotivetalk_jax.data import video
    from emotivetalk_jax.pipeline import check_output_path

    out = tmp_path / "talk.mp4"
    out.write_bytes(b"previous video")

    def run_then_interrupt(*args, **kwargs):
        subprocess.run(*args, **kwargs)
        assert video.temp_path(out).is_file()  # ffmpeg wrote the temporary file
        raise KeyboardInterrupt

    monkeypatch.setattr(video, "subprocess", SimpleNamespace(run=run_then_interrupt))
    with pytest.raises(KeyboardInterrupt):
        video.write_mp4(out, np.zeros((2, 16, 16, 3), np.uint8))
    assert out.read_bytes() == b"previous video"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.mp4"]
    video.temp_path(out).write_bytes(b"left by kill -9")
    check_output_path(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.mp4"]


# ----------------------------------------------------------------------------- signals


def _start(args, cwd=ROOT, **kw) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _wait(proc, ready, timeout=120.0):
    """Until `ready()` holds, the process still running."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if ready():
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out")


def _handlers_installed(proc) -> Callable[[], bool]:
    """Whether the CLI's SIGTERM handler is installed (bit 15 of SigCgt in /proc/PID/status)."""

    def ready():
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
        return False

    return ready


def _stop(proc, sig, code) -> str:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith(f"emotivetalk: interrupted by {sig.name}"), err[-500:]
    return err


needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/PID/status")


@needs_proc
@pytest.mark.parametrize("sig,delay", [(signal.SIGINT, 2.5), (signal.SIGTERM, 0.5)], ids=["SIGINT", "SIGTERM"])
def test_generate_interrupted(bundle, tmp_path, sig, delay):
    out = tmp_path / "new" / "x.mp4"
    proc = _start([sys.executable, "-m", "emotivetalk_jax.cli", "generate", "--portrait", str(PORTRAIT), "--audio",
                   str(SPEECH), "--checkpoint", str(bundle), "--out", str(out), "--quiet"])
    _wait(proc, _handlers_installed(proc))
    time.sleep(delay)  # somewhere in checks, loading, compiling or sampling
    _stop(proc, sig, 128 + sig)
    assert not (tmp_path / "new").exists() and not list(tmp_path.rglob(".*tmp*"))


@needs_proc
def test_convert_interrupted_leaves_nothing(tmp_path):
    """SIGINT while the converted checkpoint is being written (held there on purpose): the
    temporary folder and the output folder the command created are gone."""
    from emotivetalk_jax.smoke import write_random_svd

    src = write_random_svd(tmp_path / "svd", "tiny", 0)
    out = tmp_path / "new" / "conv"
    slow = ("import sys, time; from emotivetalk_jax import manifest, cli; w = manifest.write_manifest; "
            "manifest.write_manifest = lambda *a, **k: (time.sleep(60), w(*a, **k)); sys.exit(cli.main())")
    proc = _start([sys.executable, "-c", slow, "convert", "svd", str(src), str(out)])
    _wait(proc, lambda: any((tmp_path / "new" / "conv").glob(".*.tmp-*")) if (tmp_path / "new" / "conv").exists()
          else False)
    _stop(proc, signal.SIGINT, 130)
    assert not (tmp_path / "new").exists()


@needs_proc
def test_prepare_interrupted_then_resumed_rebuilds_damaged_cache(tmp_path, capsys):
    """SIGTERM mid-run keeps the finished clips (no temporary file); the rerun reuses them,
    rebuilds a damaged one with a line in the report, and prints only JSON on stdout."""
    from emotivetalk_jax.data.synthetic import SynthConfig, synth_main

    src = tmp_path / "videos"
    synth_main(src, 8, seed=1, size=64, progress=False, config=SynthConfig(min_seconds=1.2, max_seconds=1.4))
    out = tmp_path / "prepared"
    proc = _start([sys.executable, "-m", "emotivetalk_jax.cli", "prepare", str(src), str(out), "--size", "64",
                   "--workers", "2", "--no-progress"])
    _wait(proc, lambda: any((out / ".work").glob("*.npz")))
    err = _stop(proc, signal.SIGTERM, 143)
    assert "finished work is kept" in err
    assert not list(out.rglob("*.tmp")) and not (out / ".build").exists()
    cached = sorted((out / ".work").glob("*.npz"))
    assert cached
    cached[0].write_bytes(cached[0].read_bytes()[:100])  # damaged
    (src / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    rc = cli.main(["prepare", str(src), str(out), "--size", "64", "--workers", "2", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    report = json.loads(cap.out)  # stdout is JSON only
    assert list(report["rebuilt"]) == [cached[0].stem] and report["reused"] == len(cached) - 1
    assert sum(report["counts"].values()) == 8 and set(report["skipped"]) == {"corrupt"}
    assert "skipped corrupt" in cap.err and f"{cached[0].stem} is damaged" in cap.err


@needs_proc
def test_train_interrupted(tmp_path):
    work = tmp_path / "new" / "run"
    proc = _start([sys.executable, "-m", "emotivetalk_jax.cli", "train", "--config",
                   "configs/train.py:stage=vaid,variant=tiny", "--workdir", str(work), "--config.progress=False"])
    _wait(proc, lambda: work.exists())
    time.sleep(1.0)  # building the stage
    _stop(proc, signal.SIGINT, 130)
    assert not (tmp_path / "new").exists()  # no checkpoint yet: nothing worth keeping
