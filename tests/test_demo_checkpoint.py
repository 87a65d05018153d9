"""The demo checkpoint shipped in the package (emotivetalk_jax/assets/demo): the default of
`generate` and `bench-synthetic`. It is present, intact (every file against its manifest's
sha256), at most 25 MB, loads as the demo variant at 64 px, and its V-AID carries the Di-CTE
statistics it was trained with. What it scores is measured, not tested: benchmarks/README.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np


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
    README's speech (held-out test clip 0 of the synthetic domain, spoken neutral) as neutral."""
    from emotivetalk_jax.data.audio import load_audio
    from emotivetalk_jax.emotion.speech import load_speech_recognizer
    from emotivetalk_jax.pipeline import default_checkpoint

    folder = default_checkpoint() / "speech_head"
    rec = load_speech_recognizer(folder)
    assert rec.head.cfg.feature == "voice"
    keyword, probs = rec.predict(load_audio(folder.parents[1] / "demo_speech.wav"))
    assert keyword == "neutral" and probs.max() > 0.5
