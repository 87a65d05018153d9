"""The foundation's end-to-end check: a random SVD in diffusers format, converted, run once.

`write_random_svd` makes a diffusers SVD repository (unet/ + vae/ + model_index.json)
with random weights from a named variant, written through the same exporter real users
get. `forward_once` loads a converted (orbax) checkpoint and runs one UNet denoising
forward over a window plus a VAE decode, the shape of one sampler step.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from emotivetalk_jax.convert import load_model, svd
from emotivetalk_jax.convert.engine import abstract_model, random_params
from emotivetalk_jax.models.variants import get_svd_variant


def write_random_svd(out: str | os.PathLike, variant: str = "tiny", seed: int = 0) -> Path:
    """A diffusers-format SVD repository with random weights (no download)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder")
    v = get_svd_variant(variant)
    for i, (kind, cfg, export) in enumerate(
        [("unet", v.unet, svd.export_diffusers_unet), ("vae", v.vae, svd.export_diffusers_vae)]
    ):
        shape = abstract_model(lambda: svd.build(kind, dict(cfg), rngs=nnx.Rngs(0)))
        export(random_params(shape, seed + i), out / kind)
    index = {
        "_class_name": "StableVideoDiffusionPipeline",
        "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
        "vae": ["diffusers", "AutoencoderKLTemporalDecoder"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out


def forward_once(ckpt: str | os.PathLike, *, frames: int | None = None, seed: int = 0) -> dict:
    """One UNet forward on a (1, F, h, w, 8) window and a VAE decode; returns a summary."""
    ckpt = Path(ckpt)
    unet, vae = load_model(ckpt / "unet"), load_model(ckpt / "vae")
    cfg = unet.config
    f = frames or cfg["num_frames"]
    size = cfg.get("sample_size") or 64
    key = jax.random.split(jax.random.key(seed), 3)
    noisy = jax.random.normal(key[0], (1, f, size, size, cfg["in_channels"] // 2))
    ref = jnp.broadcast_to(jax.random.normal(key[1], (1, 1, size, size, cfg["in_channels"] // 2)), noisy.shape)
    context = jax.random.normal(key[2], (1, 1, cfg["cross_attention_dim"]))
    added = jnp.array([[6.0, 127.0, 0.02]])
    t0 = time.perf_counter()
    step = nnx.jit(lambda m, x, t, c, a: m(x, t, c, a))
    out = jax.block_until_ready(step(unet, jnp.concatenate([noisy, ref], -1), jnp.array([1.0]), context, added))
    t1 = time.perf_counter()
    decode = nnx.jit(lambda m, z: m.decode(z, num_frames=f), )
    video = jax.block_until_ready(decode(vae, out[0] / vae.config["scaling_factor"]))
    t2 = time.perf_counter()
    return {
        "unet_out": tuple(out.shape),
        "video": tuple(video.shape),
        "finite": bool(np.isfinite(np.asarray(out)).all() and np.isfinite(np.asarray(video)).all()),
        "unet_s_incl_compile": round(t1 - t0, 2),
        "vae_s_incl_compile": round(t2 - t1, 2),
    }
