"""The demo checkpoint shipped in the package (emotivetalk_jax/assets/demo): the default of
`generate` and `bench-synthetic`. It is present, intact (every file against its manifest's
sha256), at most 25 MB, loads as the demo variant at 64 px, and its V-AID carries the Di-CTE
statistics it was trained with. What it scores is measured, not tested: benchmarks/README.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PSNR_MIN = 30.0  # dB against the VAE decoder; its training run measured 32.7 on clean latents of test clips 64-71


def test_default_checkpoint_is_the_shipped_demo_and_is_intact():
    from emotivetalk_jax.bundle import load_bundle, read_settings, verify_bundle
    from emotivetalk_jax.pipeline import default_checkpoint

    ckpt = default_checkpoint()
    assert ckpt is not None and ckpt.name == "demo" and ckpt.parent.name == "assets"
    assert verify_bundle(ckpt, hashes=True) is not None
    size = sum(f.stat().st_size for f in Path(ckpt).rglob("*") if f.is_file())
    assert size <= 25 * 2**20, size
    s = read_settings(ckpt)
    assert (s.variant, s.vaid_variant, s.resolution) == ("demo", "demo", 64)
    b = load_bundle(ckpt)
    dicte = b.vaid.dicte
    assert dicte.cfg.standardise and dicte.cfg.cond_residual
    scale = np.asarray(dicte.stats.scale[...])
    assert np.all(np.isfinite(scale)) and np.all(scale > 0) and not np.allclose(scale, 1.0)  # calibrated


def test_shipped_speech_head_reads_the_readme_speech():
    """The demo carries a speech-emotion head (voice statistics: no encoder), and it reads the
    README's speech as the emotion it was made with: the asset is held-out test clip 0 of the
    synthetic domain at 4 s (`emotivetalk synth --split test --clips 1 --min-seconds 4
    --max-seconds 4 --head-motion 0`), spoken neutral."""
    from emotivetalk_jax.data.audio import load_audio
    from emotivetalk_jax.data.synthetic import SynthConfig, SyntheticDomain
    from emotivetalk_jax.emotion.speech import load_speech_recognizer
    from emotivetalk_jax.emotion.voice_features import VOICE_DIM
    from emotivetalk_jax.pipeline import default_checkpoint

    folder = default_checkpoint() / "speech_head"
    rec = load_speech_recognizer(folder)
    assert rec.head.cfg.feature == "voice" and rec.head.cfg.in_dim == VOICE_DIM
    wave = load_audio(folder.parents[1] / "demo_speech.wav")
    clip = SyntheticDomain(0, SynthConfig(min_seconds=4, max_seconds=4, head_motion=0)).clip(0, "test")
    np.testing.assert_allclose(wave, clip.audio, atol=1 / 2**15)  # the asset is that clip's speech (16-bit)
    keyword, probs = rec.predict(wave)
    assert keyword == clip.emotion == "neutral" and probs.max() > 0.5


def test_shipped_fast_decoder_follows_the_vae_decoder():
    """The demo carries a fast decoder (issue 29, `generate --fast-decode`) distilled from its VAE's
    decoder: on held-out frames' latents it draws what the full decoder draws, within PSNR_MIN dB."""
    import jax.numpy as jnp

    from emotivetalk_jax.data.measure import psnr
    from emotivetalk_jax.data.synthetic import SyntheticDomain, domain_config
    from emotivetalk_jax.pipeline import EmotiveTalkPipeline, default_checkpoint

    pipe = EmotiveTalkPipeline.from_pretrained(default_checkpoint(), progress=False, fast_decode=True)
    clip = SyntheticDomain(0, domain_config(pipe.settings.synthetic_head_motion)).clip(40, "test")
    x = jnp.asarray(clip.frames(0, 8, size=pipe.resolution).astype(np.float32) / 127.5 - 1.0)
    z = pipe.bundle.vae.encode(x)[0][None] * pipe.latent_scale
    x_ref = jnp.asarray(clip.portrait(pipe.resolution).astype(np.float32) / 127.5 - 1.0)[None]
    fast = pipe.decode(z, pipe.decode_reference(x_ref))  # the portrait, which it reads
    pipe.fast_decode = False
    full = pipe.decode(z)
    assert np.mean([psnr(a, b) for a, b in zip(fast, full)]) >= PSNR_MIN
