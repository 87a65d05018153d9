"""Full-size speed and memory on one accelerator (issue 16, item 5), side by side in one run.

    python benchmarks/accelerator.py [--tiny] [--sections unet,sampler,vae,audio,train] [--out FILE.jsonl]

Sections (random weights; bf16 parameters and compute on an accelerator, float32 on CPU):
  unet     the SVD UNet port (UNetSpatioTemporal) forward at 25 and 120 frames, 64x64 latent, jitted
           and warm, against diffusers' UNetSpatioTemporalConditionModel eager (SDPA) on the same
           card when torch and diffusers import ("unavailable" otherwise)
  sampler  `diffusion.sampler.sample` on ETHD `emotivetalk_512`: one 120-frame window, 25 DDIM
           steps, once per attention backend the machine supports (cuda: cudnn, xla; tpu: pallas,
           xla; cpu: xla) without guidance and with two-branch guidance (joint, lip = expr = 2.0):
           first call (compile + run), warm time, peak device memory
  vae      the SVD temporal VAE decoding 120 frames at 512 px (in the bundle's decode chunks)
  audio    wav2vec2 features + V-AID (lip projector, Di-CTE sampling) for 4.8 s of speech
  train    the full `emotivetalk_512` stage-2 step (120 frames at 512 px, batch 1, bf16 compute,
           8-bit Adam) with remat none and blocks: step time, peak memory, fits in 80 GB or not
`--tiny`: the same sections on the `tiny` variants at small sizes (CPU, CI).

Every measurement runs in its own subprocess (a clean peak-memory counter, torch and JAX never
share a card's memory, a crash or failed allocation costs one row) with a share of an overall
time budget (`--budget-s`, default 470 s to fit 8 minutes with start-up); rows print as JSON
lines as they finish and a table at the end. TFLOP/s: XLA's GPU cost analysis omits cuDNN /
cuBLAS calls, so full-size rows use REFERENCE.md's CPU-lowering count (1.258 TFLOP per frame per
UNet forward at a 64x64 latent) and CPU runs use the compiled program's own cost analysis.
Timings: `block_until_ready`, one warm-up, then min / median over `--repeats`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("unet", "sampler", "vae", "audio", "train")
UNET_TFLOP_PER_FRAME = 1.258  # REFERENCE.md 4 / 7: one SVD UNet forward, 64x64 latent, CPU lowering
GIB = 2**30
FIT_GIB = 80e9 / GIB  # "fits an 80 GB card"


# ----------------------------------------------------------------------------- helpers (child side)


def _emit(row: dict) -> None:
    print("RESULT " + json.dumps(row, default=str), flush=True)


def _time(fn, repeats: int) -> dict:
    """One warm-up, then min / median of `repeats` timed calls (each ends in block_until_ready)."""
    fn()
    ts = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return dict(min_s=min(ts), median_s=statistics.median(ts), repeats=len(ts))


def _peak_gib():
    import jax

    try:
        st = jax.devices()[0].memory_stats()
    except Exception:
        return None
    return round(st["peak_bytes_in_use"] / GIB, 3) if st and "peak_bytes_in_use" in st else None


def _dtype():
    import jax.numpy as jnp

    from emotivetalk_jax.accelerators import resolve_precision

    return jnp.dtype(resolve_precision("auto"))


def _random(abstract_model, seed: int, dtype):
    """Random weights (host draw, `convert.engine.random_params`), stored and computed in `dtype`."""
    from emotivetalk_jax.accelerators import apply_precision
    from emotivetalk_jax.convert.engine import random_params

    m = random_params(abstract_model, seed)
    return apply_precision(m, dtype)


def _n_params(model) -> int:
    import jax
    from flax import nnx

    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def _cpu_flops(compiled):
    """XLA's flop count of a compiled program, only on the CPU backend (GPU omits library calls)."""
    import jax

    if jax.default_backend() != "cpu":
        return None
    try:
        ca = compiled.cost_analysis()
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        return float(ca.get("flops", 0.0)) or None
    except Exception:
        return None


def _is_oom(e: BaseException) -> bool:
    s = f"{type(e).__name__} {e}"
    return any(k in s for k in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OutOfMemory",
                                "Resource exhausted", "Allocator"))


def _sizes(a) -> dict:
    if a.tiny:
        return dict(unet_frames=(4, 8), latent=8, sampler_frames=None, steps=2, vae_frames=4, audio_s=1.0,
                    variant="tiny")
    return dict(unet_frames=(25, 120), latent=64, sampler_frames=120, steps=25, vae_frames=120, audio_s=4.8,
                variant="emotivetalk_512")


def _unet_cfg(tiny: bool, frames: int, latent: int) -> dict:
    from emotivetalk_jax.models.variants import SVD, TINY

    cfg = dict((TINY if tiny else SVD).unet)
    cfg.update(num_frames=frames, sample_size=latent)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


# ----------------------------------------------------------------------------- jobs (child side)


def job_env(a, arg):
    import jax

    from emotivetalk_jax.models.attention import current_backend

    backend = current_backend()
    attn = {"cuda": ["cudnn", "xla"], "tpu": ["pallas", "xla"]}.get(backend, ["xla"])
    row = dict(section="env", backend=backend, device=str(jax.devices()[0]),
               device_kind=getattr(jax.devices()[0], "device_kind", None), jax=jax.__version__,
               attention_backends=attn, dtype=str(_dtype()))
    try:
        import flax

        row["flax"] = flax.__version__
    except Exception:
        pass
    _emit(row)


def job_unet_torch(a, arg):
    frames = int(arg)
    s = _sizes(a)
    base = dict(section="unet", impl="diffusers eager", frames=frames, latent=s["latent"])
    try:
        import torch
        from diffusers import UNetSpatioTemporalConditionModel
        import diffusers
    except Exception as e:  # no torch / diffusers on this machine: a row, not a failure
        _emit(dict(base, status="unavailable", error=f"{type(e).__name__}: {e}"[:300]))
        return
    cfg = _unet_cfg(a.tiny, frames, s["latent"])
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dt = torch.bfloat16 if dev == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(dev):
        m = UNetSpatioTemporalConditionModel(**cfg).to(device=dev, dtype=dt).eval()
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(1, frames, 8, s["latent"], s["latent"], device=dev, dtype=dt, generator=g)
    t = torch.tensor([0.5], device=dev, dtype=dt)
    ctx = torch.randn(1, 1, cfg["cross_attention_dim"], device=dev, dtype=dt, generator=g)
    ids = torch.tensor([[6.0, 127.0, 0.02]], device=dev, dtype=dt)

    def run():
        with torch.inference_mode():
            m(x, t, ctx, ids, return_dict=False)
        if dev == "cuda":
            torch.cuda.synchronize()

    run()
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    r = _time(run, a.repeats)
    peak = round(torch.cuda.max_memory_allocated() / GIB, 3) if dev == "cuda" else None
    _emit(dict(base, status="ok", dtype=str(dt), params=sum(p.numel() for p in m.parameters()), peak_gib=peak,
               torch=torch.__version__, diffusers=diffusers.__version__, **r))


def job_unet_jax(a, arg):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from emotivetalk_jax.models.attention import set_attention
    from emotivetalk_jax.models.unet import UNetSpatioTemporal

    frames = int(arg)
    s = _sizes(a)
    dt = _dtype()
    cfg = _unet_cfg(a.tiny, frames, s["latent"])
    model = _random(nnx.eval_shape(lambda: UNetSpatioTemporal.from_diffusers_config(cfg, rngs=nnx.Rngs(0))), 0, dt)
    set_attention(model, "auto")
    k = jax.random.key(1)
    x = jax.random.normal(k, (1, frames, s["latent"], s["latent"], 8), dt)
    t = jnp.full((1,), 0.5, dt)
    ctx = jax.random.normal(jax.random.fold_in(k, 1), (1, 1, cfg["cross_attention_dim"]), dt)
    ids = jnp.asarray([[6.0, 127.0, 0.02]], dt)
    graph, state = nnx.split(model)
    fwd = jax.jit(lambda st, *xs: nnx.merge(graph, st)(*xs))
    t0 = time.perf_counter()
    compiled = fwd.lower(state, x, t, ctx, ids).compile()
    compile_s = time.perf_counter() - t0
    run = lambda: jax.block_until_ready(compiled(state, x, t, ctx, ids))
    t0 = time.perf_counter()
    out = run()
    first = time.perf_counter() - t0
    finite = bool(jnp.isfinite(out.astype(jnp.float32)).all())
    r = _time(run, a.repeats)
    flops = _cpu_flops(compiled)
    if flops is None and not a.tiny and s["latent"] == 64:
        flops, src = UNET_TFLOP_PER_FRAME * 1e12 * frames, "REFERENCE.md 1.258 TFLOP/frame"
    else:
        src = "CPU cost analysis" if flops else None
    _emit(dict(section="unet", impl="jax (attention auto)", status="ok", frames=frames, latent=s["latent"],
               dtype=str(dt), params=_n_params(model), compile_s=compile_s, first_call_s=first, finite=finite,
               peak_gib=_peak_gib(), flops=flops, flops_source=src,
               tflops_per_s=(flops / r["median_s"] / 1e12) if flops else None, **r))


def _sampler_inputs(a, v, dt):
    import jax
    import jax.numpy as jnp

    from emotivetalk_jax.diffusion.guidance import Branches, Conditions

    s = _sizes(a)
    n = s["sampler_frames"] or v.inference.window
    h = 8 if a.tiny else 64
    e = v.ethd
    r = jax.random.key(2)
    rnd = lambda i, *shape: jax.random.normal(jax.random.fold_in(r, i), shape, jnp.float32)
    face = jnp.zeros((1, h, h, 1)).at[:, h // 4: 3 * h // 4, h // 4: 3 * h // 4].set(1.0)
    lip = jnp.zeros((1, h, h, 1)).at[:, h // 2: 3 * h // 4, 3 * h // 8: 5 * h // 8].set(1.0)
    l_a, e_dri, e_ref = rnd(1, 1, n, 1, e.lip_dim), rnd(2, 1, n, e.expr_dim), rnd(3, 1, e.expr_dim)
    ref = rnd(0, 1, h, h, 4)
    video = {"added_time_ids": jnp.asarray([[24.0, 127.0, 0.02]]), "e_ref": e_ref, "lip_mask": lip,
             "face_mask": face}
    cond = Conditions(ref, {"lip_tokens": l_a, "e_dri": e_dri}, video)
    e_ref_f = jnp.broadcast_to(e_ref[:, None], e_dri.shape)
    null = Conditions(ref, {"lip_tokens": jnp.zeros_like(l_a), "e_dri": e_ref_f}, video)
    no_expr = Conditions(ref, {"lip_tokens": l_a, "e_dri": e_ref_f}, video)
    return n, h, Branches(cond, no_expr, null)


def job_sampler(a, arg):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from emotivetalk_jax.diffusion.sampler import SamplerConfig, sample
    from emotivetalk_jax.models.attention import set_attention
    from emotivetalk_jax.models.ethd import ETHD
    from emotivetalk_jax.models.ethd_variants import get_ethd_variant
    from emotivetalk_jax.pipeline import _Backbone

    impl, guidance = arg.split(":")
    s = _sizes(a)
    v = get_ethd_variant(s["variant"])
    dt = _dtype()
    ethd = _random(nnx.eval_shape(lambda: ETHD.from_svd_config(dict(v.svd.unet), v.ethd, rngs=nnx.Rngs(0))), 0, dt)
    set_attention(ethd, impl)
    backbone = _Backbone(ethd)
    n, h, branches = _sampler_inputs(a, v, dt)
    scale = 2.0 if guidance == "joint" else 1.0
    steps, kind = s["steps"], "ddim"
    if guidance.startswith("student"):  # a distilled student: consistency steps, one branch
        steps, kind, guidance = int(guidance[len("student"):]), "consistency", "none"
    cfg = SamplerConfig(steps=steps, window=n, overlap=0, lip_scale=scale, expr_scale=scale, guidance=guidance,
                        kind=kind)
    run = lambda k: jax.block_until_ready(sample(backbone, branches, jax.random.key(k), cfg))
    t0 = time.perf_counter()
    out = run(0)
    first = time.perf_counter() - t0
    finite = bool(jnp.isfinite(out.astype(jnp.float32)).all())
    ts = []
    for i in range(max(1, a.sampler_repeats)):
        t0 = time.perf_counter()
        run(i + 1)
        ts.append(time.perf_counter() - t0)
    warm = statistics.median(ts)
    branches_n = 2 if guidance == "joint" else 1
    flops = UNET_TFLOP_PER_FRAME * 1e12 * n * steps * branches_n if not a.tiny else None
    _emit(dict(section="sampler", impl=f"attention {impl}", guidance=guidance, status="ok", frames=n, latent=h,
               steps=steps, sampler=kind, lip_scale=scale, expr_scale=scale, dtype=str(dt), params=_n_params(ethd),
               first_call_s=first, warm_s=warm, min_s=min(ts), median_s=warm, repeats=len(ts), finite=finite,
               peak_gib=_peak_gib(), flops=flops,
               tflops_per_s=(flops / warm / 1e12) if flops else None, s_per_video_second=warm / (n / 25.0)))


def job_vae(a, arg):
    import jax
    from flax import nnx

    from emotivetalk_jax.bundle import BundleSettings, vae_factor
    from emotivetalk_jax.convert import svd
    from emotivetalk_jax.models.ethd_variants import get_ethd_variant
    from emotivetalk_jax.pipeline import _decode

    s = _sizes(a)
    v = get_ethd_variant(s["variant"])
    st = BundleSettings.for_variant(s["variant"])
    dt = _dtype()
    vae = _random(nnx.eval_shape(lambda: svd.build("vae", dict(v.svd.vae), rngs=nnx.Rngs(0))), 1, dt)
    h = st.resolution // vae_factor(vae)
    n = s["vae_frames"]
    c = max(1, min(st.decode_chunk, n))
    z = jax.random.normal(jax.random.key(3), (n, h, h, 4), dt)
    starts = list(range(0, n - c + 1, c))
    if starts[-1] + c < n:
        starts.append(n - c)

    def run():
        return jax.block_until_ready([_decode(vae, z[i:i + c][None], c) for i in starts])

    t0 = time.perf_counter()
    out = run()
    first = time.perf_counter() - t0
    r = _time(run, a.repeats)
    _emit(dict(section="vae", impl="jax decode", status="ok", frames=n, resolution=st.resolution, chunk=c,
               out_shape=list(out[0].shape[1:]), dtype=str(dt), params=_n_params(vae), first_call_s=first,
               peak_gib=_peak_gib(), frames_per_s=n / r["median_s"], **r))


def job_audio(a, arg):
    import types

    import jax
    import numpy as np
    from flax import nnx

    from emotivetalk_jax.bundle import BundleSettings
    from emotivetalk_jax.convert.audio import build_audio_encoder
    from emotivetalk_jax.emotion.codebook import Codebook
    from emotivetalk_jax.models.face_encoders import FaceEncoders
    from emotivetalk_jax.models.vaid import VAID
    from emotivetalk_jax.models.vaid_variants import get_vaid_variant
    from emotivetalk_jax.models.variants import BASE_AUDIO, TINY_AUDIO
    from emotivetalk_jax.pipeline import EmotiveTalkPipeline

    s = _sizes(a)
    vv = get_vaid_variant(s["variant"])
    st = BundleSettings.for_variant(s["variant"], vv.name)
    dt = _dtype()
    audio_cfg = dict(TINY_AUDIO if vv.perceiver.audio_dim == TINY_AUDIO["hidden_size"] else BASE_AUDIO)
    audio = _random(build_audio_encoder(audio_cfg, abstract=True), 2, dt)
    vaid = _random(nnx.eval_shape(lambda: VAID(vv, rngs=nnx.Rngs(0))), 3, dt)
    face = _random(nnx.eval_shape(lambda: FaceEncoders(vv.face, rngs=nnx.Rngs(0))), 4, dt)
    book = Codebook(np.random.default_rng(5).standard_normal((8, vv.dicte.expr_dim)).astype(np.float32),
                    np.ones(8, np.int64), {"random": True})
    # The pipeline's own stage methods, on a bundle holding only the parts they touch (no ETHD / VAE).
    pipe = EmotiveTalkPipeline.__new__(EmotiveTalkPipeline)
    pipe.bundle = types.SimpleNamespace(audio=audio, vaid=vaid, face_encoders=face, codebook=book, settings=st,
                                        speech_head=None)
    pipe.settings, pipe.progress, pipe.timings, pipe.text_options, pipe._speech, pipe.dtype = st, False, {}, {}, None, dt
    sr = 16000
    wave = (0.1 * np.sin(2 * np.pi * 220 * np.arange(int(s["audio_s"] * sr)) / sr)
            + 0.01 * np.random.default_rng(0).standard_normal(int(s["audio_s"] * sr))).astype(np.float32)
    x_ref = jax.random.uniform(jax.random.key(4), (1, st.resolution, st.resolution, 3), minval=-1.0, maxval=1.0)
    e_ref = jax.random.normal(jax.random.key(5), (1, vv.dicte.expr_dim))
    parts = {}

    def run():
        t0 = time.perf_counter()
        ai = pipe.encode_audio(wave)
        t1 = time.perf_counter()
        l_a = pipe.lip_latents(ai)
        t2 = time.perf_counter()
        e, _ = pipe.expression_latents(None, ai, x_ref, e_ref, jax.random.key(6))
        t3 = time.perf_counter()
        parts.update(audio_encoder_s=t1 - t0, lip_s=t2 - t1, dicte_s=t3 - t2)
        return l_a, e

    t0 = time.perf_counter()
    l_a, e = run()
    first = time.perf_counter() - t0
    r = _time(run, a.repeats)
    _emit(dict(section="audio", impl="wav2vec2 + V-AID (lip + Di-CTE)", status="ok", seconds=s["audio_s"],
               frames=int(l_a.shape[1]), dicte_steps=st.dicte_steps, dtype=str(dt), first_call_s=first,
               last_parts=parts, peak_gib=_peak_gib(), **r))


def _train_batch(stage, batch_size: int, program, cfg):
    import numpy as np

    d = stage.data
    f, s = d["frames"], d["size"]
    rng = np.random.default_rng(0)
    b = {"frames": rng.integers(0, 256, (batch_size, f, s, s, 3), dtype=np.uint8),
         "reference": rng.integers(0, 256, (batch_size, s, s, 3), dtype=np.uint8),
         "audio": (0.1 * rng.standard_normal((batch_size, 640 * (f + 2 * d["audio_context"])))).astype(np.float32)}
    for m in d["mask_sizes"]:
        box = np.zeros((batch_size, m, m, 1), np.float32)
        box[:, m // 4: 3 * m // 4, m // 4: 3 * m // 4] = 1.0
        lip = np.zeros_like(box)
        lip[:, m // 2: 3 * m // 4, 3 * m // 8: 5 * m // 8] = 1.0
        b[f"mask_lip_{m}"], b[f"mask_face_{m}"] = lip, box
    if stage.audio_encoder is not None:  # the loader's cached whole-utterance features (`frame_features`)
        dim = int(cfg.audio_encoder.hidden_size)
        b["frame_features"] = rng.standard_normal((batch_size, f + 2 * d["audio_context"], dim)).astype(np.float32)
    return program.global_batch(b)


def job_train(a, arg):
    import jax

    sys.path.insert(0, str(ROOT))
    from configs.train import get_config
    from emotivetalk_jax.train import loop
    from emotivetalk_jax.train.optim import state_bytes

    remat = arg
    s = _sizes(a)
    cfg = get_config(f"stage=ethd,variant={s['variant']}")
    cfg.remat = remat
    cfg.batch_size = 1
    cfg.mesh = [("data", 1), ("fsdp", 1), ("tensor", 1)]
    cfg.optim.name = "adam8bit"
    if not a.tiny:
        cfg.compute_dtype = "bfloat16"
    base = dict(section="train", impl=f"remat {remat}", remat=remat, variant=s["variant"], batch=1,
                compute_dtype=str(cfg.compute_dtype), optimizer="adam8bit")
    row = dict(base)
    try:
        t0 = time.perf_counter()
        program = loop.build_program(cfg)
        stage = program.stage
        row.update(frames=stage.data["frames"], size=stage.data["size"],
                   trained_params=int(sum(x.size for x in jax.tree.leaves(program.abstract.params))),
                   params_gib=state_bytes(program.abstract.params) / GIB,
                   opt_state_gib=state_bytes(program.abstract.opt) / GIB)
        batch = _train_batch(stage, 1, program, cfg)
        frozen = loop.place_frozen(program)
        row["build_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # compile from the abstract state (nothing allocated yet), then make the real state
        opts = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True} \
            if jax.default_backend() == "cpu" else None
        step = loop.compile_step(program, program.abstract, frozen, batch, opts)
        row["compile_s"] = time.perf_counter() - t0
        m = step.memory_analysis()
        if m is not None:
            row["xla_estimate_gib"] = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                                       - m.alias_size_in_bytes) / GIB
        state = loop.initial_state(program, 0)
        t0 = time.perf_counter()
        state, met = step(state, frozen, batch)
        jax.block_until_ready(met)
        row["first_step_s"] = time.perf_counter() - t0
        ts = []
        for _ in range(max(1, a.train_repeats)):
            t0 = time.perf_counter()
            state, met = step(state, frozen, batch)
            jax.block_until_ready(met)
            ts.append(time.perf_counter() - t0)
        peak = _peak_gib()
        row.update(status="ok", min_s=min(ts), median_s=statistics.median(ts), repeats=len(ts), peak_gib=peak,
                   loss=float(met["loss"]),
                   fits_80gb=("yes" if peak is not None and peak <= FIT_GIB else
                              "no (peak over 80 GB)" if peak is not None else "unknown (no memory stats)"))
    except Exception as e:
        if not _is_oom(e):
            raise
        row.update(status="does not fit", fits_80gb="no (allocation failed)", peak_gib=_peak_gib(),
                   error=f"{type(e).__name__}: {e}"[:400])
    _emit(row)


JOBS = {"env": job_env, "unet_torch": job_unet_torch, "unet_jax": job_unet_jax, "sampler": job_sampler,
        "vae": job_vae, "audio": job_audio, "train": job_train}


def child(a) -> None:
    name, _, arg = a.child.partition("=")
    sys.path.insert(0, str(ROOT))
    try:
        JOBS[name](a, arg)
    except Exception as e:  # one failing measurement is a row, not a lost run
        section = "unet" if name.startswith("unet") else name
        _emit(dict(section=section, job=a.child, status="oom" if _is_oom(e) else "error",
                   error=f"{type(e).__name__}: {e}"[:600], traceback=traceback.format_exc()[-1500:]))


# ----------------------------------------------------------------------------- parent


def plan(a, env: dict) -> list[str]:
    s = _sizes(a)
    backends = [b for b in env.get("attention_backends", ["xla"])]
    if a.attention:
        backends = a.attention.split(",")
    jobs = []
    for sec in a.sections:
        if sec == "unet":
            for f in s["unet_frames"]:
                jobs += [f"unet_torch={f}", f"unet_jax={f}"]
        elif sec == "sampler":
            for i, b in enumerate(backends):
                for g in ("none", "joint", "student1", "student2", "student4"):
                    jobs.append(f"sampler={b}:{g}")
        elif sec == "train":
            jobs += [f"train={r}" for r in a.remat.split(",")]
        else:
            jobs.append(sec)
    return jobs


def run_job(a, job: str, limit: float) -> list[dict]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", job, "--repeats", str(a.repeats),
           "--sampler-repeats", str(a.sampler_repeats), "--train-repeats", str(a.train_repeats)]
    cmd += ["--tiny"] if a.tiny else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    section = "unet" if job.startswith("unet") else job.split("=")[0]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max(1.0, limit))
    except subprocess.TimeoutExpired:
        return [dict(section=section, job=job, status="timeout", error=f"no result within {limit:.0f} s")]
    rows = []
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            try:
                rows.append(json.loads(line[7:]))
            except json.JSONDecodeError:
                pass
    if not rows:
        rows = [dict(section=section, job=job, status="error",
                     error=f"exit {r.returncode}: " + (r.stderr or r.stdout)[-800:])]
    for row in rows:
        row.setdefault("job", job)
        row["wall_s"] = round(time.perf_counter() - t0, 2)
    return rows


def _f(x, fmt="{:.3f}"):
    return "-" if x is None else fmt.format(x) if isinstance(x, (int, float)) else str(x)


def table(rows: list[dict]) -> str:
    head = ("section", "what", "frames", "status", "first s", "min s", "median s", "peak GiB", "TFLOP/s", "note")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.get("section") == "env":
            continue
        what = r.get("impl", r.get("job", ""))
        if r.get("section") == "sampler" and r.get("sampler") == "consistency":
            what += f", student {r['steps']} steps"
        elif r.get("section") == "sampler" and "guidance" in r:
            what += f", guidance {r['guidance']}"
        note = r.get("fits_80gb") and f"fits 80 GB: {r['fits_80gb']}" or ""
        if r.get("status") not in ("ok",):
            note = (r.get("error") or "").splitlines()[0][:80] if r.get("error") else note
        first = r.get("first_call_s", r.get("first_step_s"))
        lines.append("| " + " | ".join([r.get("section", ""), what, _f(r.get("frames"), "{}"), r.get("status", ""),
                                         _f(first, "{:.2f}"), _f(r.get("min_s")), _f(r.get("median_s")),
                                         _f(r.get("peak_gib"), "{:.2f}"), _f(r.get("tflops_per_s"), "{:.1f}"),
                                         note]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny variants at small sizes (CPU / CI)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--out", type=Path, help="also write the JSON lines here")
    p.add_argument("--attention", default="", help="sampler backends (default: all the machine supports)")
    p.add_argument("--remat", default="none,blocks", help="train section remat settings")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats after a warm-up (unet, vae, audio)")
    p.add_argument("--sampler-repeats", type=int, default=1, help="warm sampler runs after the first call")
    p.add_argument("--train-repeats", type=int, default=3, help="timed steps after the first")
    p.add_argument("--budget-s", type=float, default=470.0, help="overall time limit; later jobs are skipped")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(a)
        return 0
    a.sections = [x.strip() for x in a.sections.split(",") if x.strip()]
    bad = sorted(set(a.sections) - set(SECTIONS))
    if bad:
        p.error(f"unknown sections {bad}; choose from {', '.join(SECTIONS)}")
    t_start = time.perf_counter()
    out = open(a.out, "w") if a.out else None
    rows: list[dict] = []

    def emit(row):
        rows.append(row)
        line = json.dumps(row, default=str)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    env_rows = run_job(a, "env", a.budget_s)
    for r in env_rows:
        emit(r)
    env = env_rows[0] if env_rows and env_rows[0].get("section") == "env" else {}
    for job in plan(a, env):
        left = a.budget_s - (time.perf_counter() - t_start)
        if left < 5:
            section = "unet" if job.startswith("unet") else job.split("=")[0]
            emit(dict(section=section, job=job, status="skipped", error="time budget (--budget-s) spent"))
            continue
        for r in run_job(a, job, left):
            emit(r)
    done = {r.get("section") for r in rows}
    for sec in a.sections:  # every asked-for section names itself, whatever happened
        if sec not in done:
            emit(dict(section=sec, status="error", error="no rows"))
    print(f"\n{env.get('device', '?')} ({env.get('backend', '?')}), jax {env.get('jax', '?')}, "
          f"{env.get('dtype', '?')}, {'tiny' if a.tiny else 'full size'}, "
          f"{time.perf_counter() - t_start:.0f} s in all")
    print(table(rows))
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
