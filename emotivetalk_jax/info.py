"""`emotivetalk info`: parameter counts of every component of a variant, from abstract
models (`nnx.eval_shape`: shapes only, nothing allocated, seconds on a CPU)."""

from __future__ import annotations

from typing import Any

from flax import nnx

from emotivetalk_jax.models.ethd_variants import get_ethd_variant

# ETHD additions by kind: count key -> NNX path names that select them.
_ADDITIONS = {
    "ethd_lip_proj": ("lip_proj",),
    "ethd_expr_proj": ("expr_proj",),
    "ethd_edi": ("edi",),
    "ethd_temporal_expr": ("temporal_expr_norm", "temporal_expr_attn"),
}


def _audio_config(variant: str) -> dict:
    """wav2vec2-base, or for `tiny` REFERENCE.md's tiny wav2vec2 (pairs with V-AID tiny's width 32)."""
    from emotivetalk_jax.models.variants import default_audio_config

    # transformers' default mask_time_prob (0.05): real checkpoints carry masked_spec_embed.
    return {**default_audio_config(variant), "mask_time_prob": 0.05}


def param_counts(variant: str) -> dict[str, int]:
    """Parameters per component: SVD UNet part, ETHD additions by kind, VAE, audio encoder, V-AID."""
    from emotivetalk_jax.convert.audio import build_audio_encoder
    from emotivetalk_jax.convert.svd import build
    from emotivetalk_jax.models.ethd import ETHD, NEW_PARAMS, SVD_PARAMS
    from emotivetalk_jax.models.layers import param_count
    from emotivetalk_jax.models.vaid import vaid_param_counts

    v = get_ethd_variant(variant)
    ethd = nnx.eval_shape(lambda: ETHD.from_svd_config(dict(v.svd.unet), v.ethd, rngs=nnx.Rngs(0)))
    counts = {"unet_svd": param_count(ethd, SVD_PARAMS)}
    for name, keys in _ADDITIONS.items():
        counts[name] = param_count(ethd, nnx.Any(*(nnx.PathContains(k) for k in keys)))
    counts["ethd_additions"] = param_count(ethd, NEW_PARAMS)
    counts["ethd_backbone"] = param_count(ethd)
    vae = nnx.eval_shape(lambda: build("vae", dict(v.svd.vae), rngs=nnx.Rngs(0)))
    decoder = param_count(vae.decoder)  # the encoder side includes quant_conv
    counts.update(vae=param_count(vae), vae_encoder=param_count(vae) - decoder, vae_decoder=decoder)
    counts["audio_encoder"] = param_count(build_audio_encoder(_audio_config(variant), abstract=True))
    counts.update({f"vaid_{k}": n for k, n in vaid_param_counts(variant).items()})
    return counts


def _human(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3f}{unit}"
    return str(n)


def info_main(variant: str) -> dict[str, Any]:
    """Everything `emotivetalk info --variant NAME` prints."""
    v = get_ethd_variant(variant)
    counts = param_counts(variant)
    return {
        "variant": v.name,
        "resolution": v.resolution,
        "latent_size": v.latent_size,
        "train_frames": v.train.frames,
        "window": v.inference.window,
        "overlap": v.inference.overlap,
        "steps": v.inference.steps,
        "params": counts,
        "params_human": {k: _human(n) for k, n in counts.items()},
    }
