"""Whole-length windowed sampling with the tiny ETHD: time per frame and memory against length.

    python benchmarks/sampler.py [--frames 120 250 750 1500] [--steps 3] [--window 120 --overlap 24]

Each length runs in a fresh subprocess (so peak RSS is that length's alone): build the tiny
ETHD (random weights), compile the sampler for the length's bucket, then time one full
sampling run (warm). Reported per length: windows per step, compile time, warm wall time,
milliseconds per frame per step, peak RSS, XLA's temp buffer size of the program and the
size of one latent buffer. Flat ms/frame/step and memory growing only by latent-sized
buffers is what the non-autoregressive design promises (paper 3.4, Tab. 3).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time


def _child(a: argparse.Namespace) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from emotivetalk_jax.diffusion import Conditions, SamplerConfig, plan
    from emotivetalk_jax.diffusion import sampler as sampler_lib
    from emotivetalk_jax.models.ethd import ETHD
    from emotivetalk_jax.models.ethd_variants import TINY

    model = nnx.eval_shape(lambda: ETHD.from_svd_config(dict(TINY.svd.unet), TINY.ethd, rngs=nnx.Rngs(0)))
    r = np.random.default_rng(0)
    nnx.update(model, jax.tree.map(lambda x: jnp.asarray(0.1 * r.normal(size=x.shape), x.dtype), nnx.state(model)))
    b, n, h, e = 1, a.child, a.size, TINY.ethd
    rand = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)
    cond = Conditions(rand(b, h, h, 4), {"lip_tokens": rand(b, n, 1, e.lip_dim), "e_dri": rand(b, n, e.expr_dim)},
                      {"added_time_ids": jnp.asarray([[24.0, 127.0, 0.02]]), "e_ref": rand(b, e.expr_dim),
                       "lip_mask": jnp.zeros((b, h, h, 1)), "face_mask": jnp.ones((b, h, h, 1))})
    cfg = SamplerConfig(steps=a.steps, window=a.window, overlap=a.overlap, batch_windows=a.batch_windows)
    p = plan(n, cfg)
    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # AOT compile for XLA's memory analysis; the persistent cache lets the jit call below reuse it
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp())
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    t0 = time.perf_counter()
    mem = sampler_lib.lower(model, cond, jax.random.key(0), cfg).compile().memory_analysis()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sampler_lib.sample(model, cond, jax.random.key(0), cfg).block_until_ready()
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = sampler_lib.sample(model, cond, jax.random.key(1), cfg).block_until_ready()
    wall = time.perf_counter() - t0
    assert bool(jnp.isfinite(out).all())
    windows = int(np.ceil(max(n - p.window, 0) / (p.window - a.overlap))) + 1
    return dict(
        frames=n, padded=p.padded, windows=windows, window_slots=p.max_windows, steps=a.steps,
        compile_s=round(compile_s, 1), first_call_s=round(first_s, 1), wall_s=round(wall, 2),
        ms_per_frame_step=round(1e3 * wall / (n * a.steps), 3),
        ms_per_window_frame_step=round(1e3 * wall / (p.max_windows * p.window * a.steps), 3),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        rss_before_compile_mb=round(rss_built, 1),
        xla_temp_mb=round(getattr(mem, "temp_size_in_bytes", 0) / 2**20, 2) if mem else None,
        xla_args_mb=round(getattr(mem, "argument_size_in_bytes", 0) / 2**20, 2) if mem else None,
        latent_mb=round(b * p.padded * h * h * 4 * 4 / 2**20, 3),
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, nargs="+", default=[120, 250, 750, 1500])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--window", type=int, default=120)
    p.add_argument("--overlap", type=int, default=24)
    p.add_argument("--size", type=int, default=8, help="latent height = width")
    p.add_argument("--batch-windows", type=int, default=1)
    p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(_child(a)))
        return
    rows = []
    for n in a.frames:
        cmd = [sys.executable, __file__, "--child", str(n), "--steps", str(a.steps), "--window", str(a.window),
               "--overlap", str(a.overlap), "--size", str(a.size), "--batch-windows", str(a.batch_windows)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    keys = list(rows[0])
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
