"""The fast decoder (issue 29): shapes and cost, a training step that learns, the safetensors round
trip, the portrait-reading kind (an untrained one returns the portrait), `fast-decoder train | add`
into a tiny random bundle, `fast_decode` in the pipeline and the one-line refusal for a bundle
without one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from emotivetalk_jax import cli
from emotivetalk_jax.models.fast_decoder import FastDecoder, FastDecoderConfig, conv_flops
from emotivetalk_jax.train import fast_decoder as fd

ASSETS = Path(__file__).resolve().parents[1] / "emotivetalk_jax" / "assets"
PORTRAIT, SPEECH = ASSETS / "portrait.png", ASSETS / "speech.wav"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from emotivetalk_jax.bundle import make_random_bundle

    return make_random_bundle(tmp_path_factory.mktemp("bundle") / "tiny", "tiny", 0, resolution=32, window=16,
                              overlap=4, steps=2, dicte_steps=2, decode_chunk=4, decode_batch=2)


def _widths(bundle: Path) -> str:
    """Fast decoder widths with as many levels as the bundle's VAE."""
    levels = len(json.loads((bundle / "vae" / "config.json").read_text())["config"]["block_out_channels"])
    return ",".join(str(8 * 2 ** (levels - 1 - i)) for i in range(levels))


def test_shapes_and_cost():
    m = FastDecoder(FastDecoderConfig(widths=(16, 8, 4)), rngs=nnx.Rngs(0))
    assert m(jnp.zeros((2, 8, 8, 4))).shape == (2, 32, 32, 3)
    assert m.cfg.factor == 4
    # the demo's: 16 x 16 x 4 latents -> 64 px frames, about a seventh of its VAE decoder's 1.35 GFLOP
    assert 0.15e9 < conv_flops(FastDecoderConfig(), 16) < 0.2e9
    with pytest.raises(ValueError, match="bad fast decoder config"):
        FastDecoderConfig(widths=())
    # reading the portrait costs per frame only the first convolution's four more input channels
    assert conv_flops(FastDecoderConfig(reference=True), 16) - conv_flops(FastDecoderConfig(), 16) == 2 * 9 * 4 * 64 * 256


def test_a_reference_decoder_starts_as_the_portrait():
    """Its last convolution starts at zero, so before training it draws the portrait on every frame;
    the portrait is (1, ...) and broadcasts over the frames; a missing portrait is refused, and a
    decoder that reads none ignores one."""
    m = FastDecoder(FastDecoderConfig(widths=(16, 8, 4), reference=True), rngs=nnx.Rngs(0))
    x_ref = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3), minval=-1, maxval=1)
    z = jax.random.normal(jax.random.key(1), (3, 8, 8, 4))
    out = m(z, x_ref, jnp.zeros((1, 8, 8, 4)))
    assert out.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(np.asarray(out), np.broadcast_to(np.asarray(x_ref), out.shape))
    with pytest.raises(ValueError, match="reads the portrait"):
        m(z)
    plain = FastDecoder(FastDecoderConfig(widths=(16, 8, 4)), rngs=nnx.Rngs(0))  # reads no portrait: ignores one
    np.testing.assert_array_equal(np.asarray(plain(z, x_ref, z[:1])), np.asarray(plain(z)))


@pytest.mark.parametrize("reference", [False, True])
def test_a_training_step_lowers_the_loss_on_a_fixed_batch(reference):
    teacher = FastDecoder(FastDecoderConfig(widths=(16, 8)), rngs=nnx.Rngs(1))
    z = jax.random.normal(jax.random.key(0), (8, 8, 8, 4))
    frames = np.clip(np.round((np.asarray(teacher(z)) * 4 + 1) * 127.5), 0, 255).astype(np.uint8)
    model = FastDecoder(FastDecoderConfig(widths=(16, 8), reference=reference), rngs=nnx.Rngs(0))
    x_ref, z_ref = jnp.asarray(frames[:1], jnp.float32) / 127.5 - 1, z[:1]
    face = jnp.zeros((8, 16, 16)).at[:, 4:12, 4:12].set(1.0)
    opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    step = fd.make_train_step(face_weight=8.0, edge_weight=2.0)
    losses = [float(step(model, opt, z, x_ref, z_ref, jnp.asarray(frames), face)) for _ in range(80)]
    assert losses[-1] < 0.8 * losses[0], losses


def test_the_training_loss_weighs_the_face_and_the_edges():
    """Known answer: an untrained portrait-reading decoder draws the portrait (black, -1); the
    target is white (+1) on a 4 x 4 face box of an 8 x 8 frame. Weighted L1: 2 x 16 x 8 / (16 x 8
    + 48) = 16/11; each axis' forward differences: 2 at the box's two edges in 4 rows, weighted by
    their first pixel (1 outside, 8 inside), over the 56 differences' weights (16 x 8 + 40):
    (4 x 2 + 4 x 16) / 168 = 3/7. The loss: 16/11 + 2 x 3/7."""
    m = FastDecoder(FastDecoderConfig(widths=(8, 4), reference=True), rngs=nnx.Rngs(0))
    face = np.zeros((1, 8, 8), np.float32)
    face[:, 2:6, 2:6] = 1.0
    frames = np.repeat((face[..., None] * 255).astype(np.uint8), 3, axis=-1)
    step = fd.make_train_step(face_weight=8.0, edge_weight=2.0)
    opt = nnx.Optimizer(m, optax.sgd(0.0), wrt=nnx.Param)
    loss = step(m, opt, jnp.zeros((1, 4, 4, 4)), -jnp.ones((1, 8, 8, 3)), jnp.zeros((1, 4, 4, 4)),
                jnp.asarray(frames), jnp.asarray(face))
    assert float(loss) == pytest.approx(16 / 11 + 2 * 3 / 7, rel=1e-6)


@pytest.mark.parametrize("reference", [False, True])
def test_safetensors_round_trip(tmp_path, reference):
    m = FastDecoder(FastDecoderConfig(widths=(8, 4), reference=reference), rngs=nnx.Rngs(3))
    if reference:  # not the zero init: the round trip must carry a drawing last convolution
        m.conv_out.kernel[...] = jax.random.normal(jax.random.key(2), m.conv_out.kernel[...].shape)
    folder = fd.save_fast_decoder(m, tmp_path / "dec")
    assert sorted(p.name for p in folder.iterdir()) == ["fast_decoder.json", "fast_decoder.safetensors"]
    back = fd.load_fast_decoder(folder)
    assert back.cfg == m.cfg
    z = jax.random.normal(jax.random.key(1), (3, 4, 4, 4))
    args = (z, jax.random.normal(jax.random.key(4), (1, 8, 8, 3)), z[:1]) if reference else (z,)
    np.testing.assert_array_equal(np.asarray(back(*args)), np.asarray(m(*args)))
    with pytest.raises(fd.FastDecoderError, match="no fast decoder at"):
        fd.load_fast_decoder(tmp_path)


def test_missing_decoder_is_one_line(bundle, tmp_path, capsys):
    from emotivetalk_jax.pipeline import EmotiveTalkPipeline, GenerationError

    pipe = EmotiveTalkPipeline.from_pretrained(bundle, progress=False)
    assert pipe.bundle.fast_decoder is None and not pipe.fast_decode  # bundles without one load as before
    with pytest.raises(GenerationError, match="has no fast decoder") as e:
        pipe.fast_decode = True
    assert "\n" not in str(e.value)
    rc = cli.main(["generate", "--portrait", str(PORTRAIT), "--audio", str(SPEECH), "--checkpoint", str(bundle),
                   "--fast-decode", "--out", str(tmp_path / "x.mp4"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "has no fast decoder (fast_decoder/)" in err[0], err
    assert not (tmp_path / "x.mp4").exists()


def test_train_add_and_generate_with_fast_decode(bundle, tmp_path, capsys):
    """`fast-decoder train` (two clips, two steps) writes the decoder and its report, `add` puts it
    into a copy of the bundle (manifest rewritten), the pipeline decodes with it when asked, with
    the portrait it reads (`decode_reference`; without it, one line)."""
    from emotivetalk_jax.bundle import load_bundle, verify_bundle
    from emotivetalk_jax.pipeline import EmotiveTalkPipeline, GenerationError

    dec = tmp_path / "dec"
    rc = cli.main(["fast-decoder", "train", str(dec), "--checkpoint", str(bundle), "--clips", "2", "--frames", "4",
                   "--sampled", "1", "--val-clips", "1", "--steps", "2", "--eval-every", "1", "--batch", "4",
                   "--widths", _widths(bundle), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    report = json.loads((dec / "report.json").read_text())
    assert [h["step"] for h in report["history"]] == [1, 2] and out["step"] == 2
    assert report["train_pairs"]["clean"] == report["train_pairs"]["noisy"] == 8
    assert report["train_pairs"]["sampled"] > 0 and report["val_pairs"]["sampled"] > 0

    ckpt = tmp_path / "ckpt"
    shutil.copytree(bundle, ckpt)
    assert cli.main(["fast-decoder", "add", str(dec), str(ckpt)]) == 0
    capsys.readouterr()
    assert verify_bundle(ckpt, hashes=True)["components"]["fast_decoder"]["component"] == "fast_decoder"
    cfg = load_bundle(ckpt).fast_decoder.cfg
    assert cfg.widths == tuple(int(w) for w in _widths(bundle).split(",")) and cfg.reference  # the default kind
    assert cli.main(["fast-decoder", "add", str(dec), str(ckpt)]) == 2  # already there: --replace
    assert "already has a fast_decoder/" in capsys.readouterr().err

    pipe = EmotiveTalkPipeline.from_pretrained(ckpt, progress=False, fast_decode=True)
    z = jax.random.normal(jax.random.key(0), (1, 11, pipe.latent_size, pipe.latent_size, 4))  # a padded last call
    with pytest.raises(GenerationError, match="reads the portrait") as e:
        pipe.decode(z)
    assert "\n" not in str(e.value)
    x_ref = jax.random.uniform(jax.random.key(1), (1, 32, 32, 3), minval=-1, maxval=1)
    ref = pipe.decode_reference(x_ref)
    assert ref[0] is x_ref and ref[1].shape == (1, pipe.latent_size, pipe.latent_size, 4)
    fast = pipe.decode(z, ref)
    pipe.fast_decode = False
    assert pipe.decode_reference(x_ref) is None  # the VAE decoder reads no portrait
    full = pipe.decode(z)
    assert fast.shape == full.shape == (11, 32, 32, 3) and fast.dtype == np.uint8
    assert not np.array_equal(fast, full)
    pipe.fast_decode = True
    r = pipe(str(PORTRAIT), str(SPEECH), seed=0, steps=1, mark=False)
    assert r.frames.shape[1:] == (32, 32, 3) and "decode" in r.timings
