"""SVD UNet forward, JAX (jitted, warm) vs diffusers PyTorch (eager), fp32 CPU, same threads.

    python benchmarks/unet_forward.py [--repeats 10] [--frames 8] [--size 32]

Builds one tiny-but-real UNet (channels 64/128, 2 layers per block, 8 frames, 32x32
latent) in diffusers, converts it through `load_diffusers_unet`, checks the outputs agree,
and prints the median time of each side and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from diffusers import UNetSpatioTemporalConditionModel
from flax import nnx

from emotivetalk_jax.convert import load_diffusers_unet

CONFIG = dict(
    sample_size=32,
    in_channels=8,
    out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    block_out_channels=(64, 128),
    addition_time_embed_dim=32,
    projection_class_embeddings_input_dim=96,
    layers_per_block=2,
    cross_attention_dim=64,
    num_attention_heads=(2, 4),
    num_frames=8,
)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=1)
    a = p.parse_args()
    threads = os.cpu_count()
    torch.set_num_threads(threads)  # XLA's CPU backend uses every core too
    torch.manual_seed(0)
    ref = UNetSpatioTemporalConditionModel(**{**CONFIG, "num_frames": a.frames}).eval()
    with torch.no_grad():
        for prm in ref.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    n_params = sum(p.numel() for p in ref.parameters())
    b, f, s = a.batch, a.frames, a.size
    g = np.random.default_rng(0)
    x = g.standard_normal((b, f, 8, s, s)).astype(np.float32)
    ctx = g.standard_normal((b, 1, CONFIG["cross_attention_dim"])).astype(np.float32)
    ids = np.tile(np.array([[6.0, 127.0, 0.02]], np.float32), (b, 1))
    t = np.full((b,), 0.5, np.float32)

    # PyTorch first, before XLA starts its thread pool (idle XLA threads spin and would
    # slow torch down if they ran side by side).
    tx, tt, tc, ti = map(torch.from_numpy, (x, t, ctx, ids))
    torch_fn = lambda: ref(tx, tt, tc, ti, return_dict=False)[0]
    with torch.inference_mode():
        want = torch_fn().numpy()
        torch_s = _median_time(torch_fn, a.repeats)

    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp, safe_serialization=True)
        model = load_diffusers_unet(tmp)
    step = nnx.jit(lambda m, *xs: m(*xs))
    jx = (jnp.asarray(x.transpose(0, 1, 3, 4, 2)), jnp.asarray(t), jnp.asarray(ctx), jnp.asarray(ids))
    jax_fn = lambda: jax.block_until_ready(step(model, *jx))
    t0 = time.perf_counter()
    got = np.asarray(jax_fn())
    compile_s = time.perf_counter() - t0
    err = np.abs(got.transpose(0, 1, 4, 2, 3) - want).max()
    jax_s = _median_time(jax_fn, a.repeats)
    print(f"UNet {CONFIG['block_out_channels']} x{CONFIG['layers_per_block']}, {n_params / 1e6:.1f}M params, "
          f"batch {b}, {f} frames, {s}x{s} latent, fp32, {threads} threads (jax {jax.__version__}, torch {torch.__version__})")
    print(f"max |jax - torch| = {err:.2e}; jax first call (compile + run) {compile_s:.2f} s")
    print(f"{'':22}{'median s':>10}")
    print(f"{'diffusers (eager)':22}{torch_s:10.4f}")
    print(f"{'emotivetalk_jax (jit)':22}{jax_s:10.4f}")
    print(f"ratio torch / jax = {torch_s / jax_s:.2f}x")


if __name__ == "__main__":
    main()
