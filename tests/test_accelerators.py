"""Accelerator policies on CPU: the attention backend choice (as data), the Pallas TPU flash
kernel against XLA in interpret mode, the precision policy (one tiny sampling run in float32
vs bfloat16) and the compilation-cache location."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from emotivetalk_jax import accelerators
from emotivetalk_jax.models import attention as A

ROOT = Path(__file__).resolve().parents[1]
BF16, F16, F32 = jnp.bfloat16, jnp.float16, jnp.float32

# (requested, backend, dtype, head_dim, T, S, bias, mask) -> implementation
CASES = [
    ("auto", "cpu", F32, 64, 4096, 4096, False, "none", "xla"),
    ("auto", "cpu", BF16, 64, 4096, 4096, False, "none", "xla"),
    ("auto", "cuda", BF16, 64, 4096, 4096, False, "none", "cudnn"),  # SVD spatial attention
    ("auto", "cuda", F16, 64, 25, 25, False, "none", "cudnn"),  # temporal attention, no mask: odd T is fine
    ("auto", "cuda", F32, 64, 4096, 4096, False, "none", "xla"),  # cuDNN flash is bf16 / fp16 only
    ("auto", "cuda", BF16, 160, 4096, 4096, False, "none", "xla"),  # head dim > 128
    ("auto", "cuda", BF16, 36, 256, 256, False, "none", "xla"),  # head dim not a multiple of 8
    ("auto", "cuda", BF16, 64, 50, 50, True, "none", "cudnn"),  # WavLM's position bias, even lengths
    ("auto", "cuda", BF16, 64, 49, 49, False, "keys", "xla"),  # a mask with an odd length
    ("auto", "cuda", BF16, 64, 48, 48, False, "keys", "cudnn"),
    ("auto", "rocm", BF16, 64, 4096, 4096, False, "none", "xla"),
    ("auto", "tpu", BF16, 64, 4096, 4096, False, "none", "pallas"),
    ("auto", "tpu", F32, 128, 1024, 1024, False, "keys", "pallas"),  # key padding -> segment ids
    ("auto", "tpu", BF16, 64, 25, 25, False, "none", "xla"),  # not a multiple of the 128 block
    ("auto", "tpu", BF16, 64, 256, 256, True, "none", "xla"),  # bias
    ("auto", "tpu", BF16, 64, 256, 256, False, "full", "xla"),
    ("xla", "cuda", BF16, 64, 4096, 4096, False, "none", "xla"),
    ("xla", "tpu", BF16, 64, 4096, 4096, False, "none", "xla"),
    ("cudnn", "cuda", BF16, 64, 4096, 4096, False, "none", "cudnn"),
    ("cudnn", "cuda", F32, 64, 4096, 4096, False, "none", "xla"),  # fallback, logged
    ("cudnn", "cpu", BF16, 64, 4096, 4096, False, "none", "xla"),
    ("cudnn", "tpu", BF16, 64, 4096, 4096, False, "none", "xla"),
    ("pallas", "tpu", BF16, 64, 4096, 4096, False, "none", "pallas"),
    ("pallas", "cuda", BF16, 64, 4096, 4096, False, "none", "xla"),
    ("pallas", "cpu", F32, 64, 4096, 4096, False, "none", "xla"),
]


@pytest.mark.parametrize("req,backend,dtype,h,t,s,bias,mask,want", CASES)
def test_policy_picks(req, backend, dtype, h, t, s, bias, mask, want):
    c = A.choose(req, backend=backend, dtype=dtype, head_dim=h, q_len=t, kv_len=s, has_bias=bias, mask=mask)
    assert c.implementation == want
    fell_back = want == "xla" and (req in ("cudnn", "pallas") or (req == "auto" and backend in ("cuda", "tpu")))
    assert bool(c.reason) == fell_back, c  # every fallback says why


def test_mask_kinds_and_bad_names():
    assert A.mask_kind(None, 8, 16) == "none"
    assert A.mask_kind((2, 1, 1, 16), 8, 16) == "keys"
    assert A.mask_kind((2, 1, 8, 16), 8, 16) == "full"
    with pytest.raises(ValueError, match="auto, xla, cudnn, pallas"):
        A.choose("flash", backend="cpu", dtype=F32, head_dim=64, q_len=8, kv_len=8)


def _qkv(b=2, t=256, s=256, n=2, h=64, dtype=F32, seed=0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(kq, (b, t, n, h), dtype), jax.random.normal(kk, (b, s, n, h), dtype),
            jax.random.normal(kv, (b, s, n, h), dtype))


def test_cpu_default_is_bit_identical_to_jax_nn():
    q, k, v = _qkv(t=24, s=40)
    mask = (jnp.arange(40) < 31)[None, None, None, :]
    bias = jax.random.normal(jax.random.key(3), (1, 2, 24, 40))
    for kw in ({}, {"mask": mask}, {"bias": bias, "mask": mask}):
        np.testing.assert_array_equal(A.attend(q, k, v, **kw), jax.nn.dot_product_attention(q, k, v, **kw))


def test_fallback_is_logged_once(caplog):
    q, k, v = _qkv(t=24, s=24, dtype=F32)
    A._logged.clear()
    with caplog.at_level(logging.INFO, logger=A.__name__):
        out = [A.attend(q, k, v, implementation="cudnn", backend="cuda") for _ in range(3)]
    lines = [r.getMessage() for r in caplog.records if r.name == A.__name__]
    assert len(lines) == 1 and "asked for cudnn, using xla" in lines[0] and "bf16/fp16" in lines[0], lines
    assert caplog.records[0].levelno == logging.WARNING
    np.testing.assert_array_equal(out[0], jax.nn.dot_product_attention(q, k, v))


@pytest.mark.parametrize("masked", [False, True])
def test_pallas_tpu_flash_matches_xla_in_interpret_mode(masked):
    from jax.experimental.pallas import tpu as pltpu

    q, k, v = _qkv(b=1, t=256, s=256, n=2, h=64)
    mask = jnp.stack([jnp.arange(256) < 200])[:, None, None, :] if masked else None
    with pltpu.force_tpu_interpret_mode():
        got = A.attend(q, k, v, mask=mask, implementation="pallas", backend="tpu")
    want = jax.nn.dot_product_attention(q, k, v, mask=mask)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)
    assert float(jnp.abs(got - want).max()) > 0  # it is another kernel, not the XLA path again


def test_every_models_attention_goes_through_the_policy():
    """No attention call site in models/ bypasses attention.attend."""
    offenders = [f"{p.name}:{i}" for p in sorted((ROOT / "emotivetalk_jax" / "models").glob("*.py"))
                 if p.name != "attention.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"dot_product_attention\(|nn\.softmax\(", line)]
    assert offenders == []


def test_set_attention_reaches_every_attention_layer_and_retraces():
    from emotivetalk_jax.models.bert import BertSelfAttention
    from emotivetalk_jax.models.layers import Attention
    from emotivetalk_jax.models.wav2vec2 import SelfAttention

    class Tiny(nnx.Module):
        def __init__(self):
            self.a = Attention(16, heads=2, dim_head=8, rngs=nnx.Rngs(0))
            self.w = SelfAttention({"hidden_size": 16, "num_attention_heads": 2}, 0, rngs=nnx.Rngs(1))
            self.b = BertSelfAttention({"hidden_size": 16, "num_attention_heads": 2}, rngs=nnx.Rngs(2))

        def __call__(self, x):
            return self.a(x) + self.w(x) + self.b(x, jnp.ones(x.shape[:2], bool))

    m, traces = Tiny(), []

    @nnx.jit
    def f(m, x):
        traces.append(1)
        return m(x)

    x = jnp.ones((1, 6, 16))
    y = f(m, x)
    A.set_attention(m, "cudnn")  # on CPU every call falls back to XLA: same numbers, a new trace
    assert {m.a.attention_impl, m.w.attention_impl, m.b.attention_impl} == {"cudnn"}
    np.testing.assert_array_equal(f(m, x), y)
    assert len(traces) == 2


# ----------------------------------------------------------------------------- precision


@pytest.mark.parametrize("name,backend,want", [("auto", "cpu", F32), ("auto", "cuda", BF16), ("auto", "gpu", BF16),
                                               ("auto", "tpu", BF16), ("float32", "tpu", F32),
                                               ("bfloat16", "cpu", BF16)])
def test_precision_policy(name, backend, want):
    assert accelerators.resolve_precision(name, backend) == jnp.dtype(want)


def test_apply_precision_casts_weights_and_compute():
    lin = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    accelerators.apply_precision(lin, BF16)
    assert lin.kernel.value.dtype == BF16 and lin(jnp.ones((1, 4), F32)).dtype == BF16


# Relative L2 error of the latents of one sampling run, bf16 against float32 (same tiny random
# bundle, same noise; every model of the bundle in bf16). Measured 0.025 on CPU (4 DDIM steps,
# 16 frames, 32 px); bf16 keeps 8 bits of mantissa (3.9e-3 per rounding), so the bound leaves
# room for the accumulation over steps and layers but not for a wrong cast (float16 or an
# accidental float32 path would fail the other assert).
BF16_LATENT_REL_ERR = 0.06


def test_bf16_sampling_run_stays_close_to_float32():
    import soundfile

    from emotivetalk_jax.bundle import random_bundle
    from emotivetalk_jax.pipeline import EmotiveTalkPipeline

    assets = ROOT / "emotivetalk_jax" / "assets"
    wave, sr = soundfile.read(str(assets / "speech.wav"), dtype="float32")
    wave = wave[: int(0.64 * sr)]  # 16 frames: one window

    def run(precision):
        b = random_bundle("tiny", 0, resolution=32, window=16, overlap=4, steps=4, dicte_steps=2, decode_chunk=16)
        pipe = EmotiveTalkPipeline(b, progress=False, precision=precision)
        k_ref, k_expr, k_noise = jax.random.split(jax.random.key(0), 3)
        p = pipe.prepare_portrait(str(assets / "portrait.png"))
        a = pipe.encode_audio(wave)
        x_ref, e_ref, ref_latent = pipe.reference(p, k_ref)
        e_dri, _ = pipe.expression_latents(None, a, x_ref, e_ref, k_expr)
        cond = pipe.conditions(pipe.lip_latents(a), e_dri, e_ref, ref_latent, p)
        assert jax.tree.leaves(nnx.state(pipe.bundle.ethd, nnx.Param))[0].dtype == jnp.dtype(precision)
        return np.asarray(pipe.denoise(cond, a.num_frames, k_noise), np.float64)

    f32, bf16 = run("float32"), run("bfloat16")
    rel = np.linalg.norm(bf16 - f32) / np.linalg.norm(f32)
    print(f"bf16 vs float32 latents, relative L2 error: {rel:.4f} (bound {BF16_LATENT_REL_ERR})")
    assert np.isfinite(bf16).all() and rel < BF16_LATENT_REL_ERR
    assert rel > 1e-4  # bf16 did run: a float32 path would give ~0


# ----------------------------------------------------------------------------- compilation cache


def test_cache_location(monkeypatch, tmp_path):
    for var in (accelerators.CACHE_ENV, "JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert accelerators.default_cache_dir() == tmp_path / ".cache" / "emotivetalk_jax" / "xla"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert accelerators.default_cache_dir() == tmp_path / "xdg" / "emotivetalk_jax" / "xla"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert accelerators.default_cache_dir() == tmp_path / "jax"
    monkeypatch.setenv(accelerators.CACHE_ENV, str(tmp_path / "ours"))
    assert accelerators.default_cache_dir() == tmp_path / "ours"
    monkeypatch.setenv(accelerators.CACHE_ENV, "off")
    assert accelerators.default_cache_dir() is None
