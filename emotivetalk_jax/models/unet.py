"""Stable Video Diffusion's UNet (diffusers `UNetSpatioTemporalConditionModel`) in Flax NNX.

Shape legend: B batch, F frames, H, W latent size, C channels, E time-embedding width
(4 * block_out_channels[0]), T context tokens, D context width (cross_attention_dim),
K number of added time ids (projection input / addition_time_embed_dim; 3 for SVD).

Attribute paths equal diffusers' state-dict paths; only leaf names (kernel/scale) and
layouts differ, so `convert.svd.SVD_RULES` maps a checkpoint one to one. Inside, video
latents are folded to (B*F, H, W, C), as diffusers folds them to (B*F, C, H, W).

Extension point: subclasses set `transformer_cls` (a `TransformerSpatioTemporalModel`
subclass with its own spatial/temporal blocks); keyword arguments of `__call__` beyond
the standard ones reach every transformer block.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.models.layers import (
    TimestepEmbedding,
    cast_params,
    conv,
    group_norm,
    timestep_embedding,
    trace_safe_rngs,
)
from emotivetalk_jax.models.transformer import TransformerSpatioTemporalModel
from emotivetalk_jax.models.unet_blocks import (
    CrossAttnDownBlockSpatioTemporal,
    CrossAttnUpBlockSpatioTemporal,
    DownBlockSpatioTemporal,
    UNetMidBlockSpatioTemporal,
    UpBlockSpatioTemporal,
)

# diffusers 0.42 `UNetSpatioTemporalConditionModel.__init__` defaults (= SVD / SVD-XT).
DEFAULT_CONFIG: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": (
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "DownBlockSpatioTemporal",
    ),
    "up_block_types": (
        "UpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
    ),
    "block_out_channels": (320, 640, 1280, 1280),
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 768,
    "layers_per_block": 2,
    "cross_attention_dim": 1024,
    "transformer_layers_per_block": 1,
    "num_attention_heads": (5, 10, 20, 20),
    "num_frames": 25,
}
_DOWN_TYPES = ("DownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal")
_UP_TYPES = ("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal")


def _tuplify(v):
    return tuple(_tuplify(x) for x in v) if isinstance(v, (list, tuple)) else v


def _per_block(cfg: dict, key: str, n: int) -> tuple:
    v = cfg[key]
    v = (v,) * n if isinstance(v, int) else v
    if len(v) != n:
        raise ValueError(f"UNet config: {key}={cfg[key]!r} needs one entry per block ({n})")
    return v


def resolve_config(cfg: dict) -> dict[str, Any]:
    """A diffusers UNet config.json dict -> the full, checked config (tuples, no `_` keys)."""
    user = {k: _tuplify(v) for k, v in cfg.items() if not k.startswith("_")}
    unknown = sorted(set(user) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"UNet config: unsupported keys {unknown}; known keys are {sorted(DEFAULT_CONFIG)}")
    c = {**DEFAULT_CONFIG, **user}
    n = len(c["down_block_types"])
    bad = [t for t in c["down_block_types"] if t not in _DOWN_TYPES] + [
        t for t in c["up_block_types"] if t not in _UP_TYPES
    ]
    if bad:
        raise ValueError(f"UNet config: unsupported block types {bad}; use {_DOWN_TYPES} / {_UP_TYPES}")
    if len(c["up_block_types"]) != n or len(c["block_out_channels"]) != n:
        raise ValueError("UNet config: down_block_types, up_block_types and block_out_channels differ in length")
    heads = _per_block(c, "num_attention_heads", n)
    for key in ("layers_per_block", "cross_attention_dim", "transformer_layers_per_block"):
        _per_block(c, key, n)
    for ch, h in zip(c["block_out_channels"], heads):
        if ch % 32 or ch % h:
            raise ValueError(
                f"UNet config: block channels {ch} must divide by 32 (GroupNorm groups) and by its heads ({h})"
            )
    if c["projection_class_embeddings_input_dim"] % c["addition_time_embed_dim"]:
        raise ValueError(
            "UNet config: projection_class_embeddings_input_dim must be a multiple of addition_time_embed_dim"
        )
    return c


class UNetSpatioTemporal(nnx.Module):
    """diffusers `UNetSpatioTemporalConditionModel`, channels-last. Build with `from_diffusers_config`."""

    transformer_cls = TransformerSpatioTemporalModel

    def __init__(self, config: dict[str, Any], *, rngs: nnx.Rngs, dtype=None):
        """`config`: a resolved config (see `resolve_config`)."""
        self.config = config
        c = config
        n = len(c["down_block_types"])
        ch = c["block_out_channels"]
        heads = _per_block(c, "num_attention_heads", n)
        layers = _per_block(c, "layers_per_block", n)
        xdim = _per_block(c, "cross_attention_dim", n)
        depth = _per_block(c, "transformer_layers_per_block", n)
        temb = ch[0] * 4
        kw = dict(rngs=rngs, dtype=dtype)

        self.conv_in = conv(c["in_channels"], ch[0], 3, padding=1, **kw)
        self.time_embedding = TimestepEmbedding(ch[0], temb, **kw)
        self.add_embedding = TimestepEmbedding(c["projection_class_embeddings_input_dim"], temb, **kw)

        down, cout = [], ch[0]
        for i, kind in enumerate(c["down_block_types"]):
            cin, cout = cout, ch[i]
            common = dict(num_layers=layers[i], add_downsample=i < n - 1, **kw)
            if kind == "DownBlockSpatioTemporal":
                down.append(DownBlockSpatioTemporal(cin, cout, temb, **common))
            else:
                down.append(CrossAttnDownBlockSpatioTemporal(
                    cin, cout, temb, transformer_layers_per_block=depth[i], num_attention_heads=heads[i],
                    cross_attention_dim=xdim[i], transformer_cls=self.transformer_cls, **common))
        self.down_blocks = nnx.List(down)

        self.mid_block = UNetMidBlockSpatioTemporal(
            ch[-1], temb, transformer_layers_per_block=depth[-1], num_attention_heads=heads[-1],
            cross_attention_dim=xdim[-1], transformer_cls=self.transformer_cls, **kw)

        up, rch, cout = [], ch[::-1], ch[-1]
        for i, kind in enumerate(c["up_block_types"]):
            prev, cout, cin = cout, rch[i], rch[min(i + 1, n - 1)]
            common = dict(num_layers=layers[::-1][i] + 1, add_upsample=i < n - 1, **kw)
            if kind == "UpBlockSpatioTemporal":
                up.append(UpBlockSpatioTemporal(cin, prev, cout, temb, **common))
            else:
                up.append(CrossAttnUpBlockSpatioTemporal(
                    cin, cout, prev, temb, transformer_layers_per_block=depth[::-1][i],
                    num_attention_heads=heads[::-1][i], cross_attention_dim=xdim[::-1][i],
                    transformer_cls=self.transformer_cls, **common))
        self.up_blocks = nnx.List(up)

        self.conv_norm_out = group_norm(ch[0], eps=1e-5, **kw)
        self.conv_out = conv(ch[0], c["out_channels"], 3, padding=1, **kw)

    @classmethod
    def from_diffusers_config(
        cls, cfg: dict, *, rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32
    ) -> UNetSpatioTemporal:
        """Build from a diffusers config.json dict (missing keys take diffusers' defaults).

        dtype: computation dtype (None: follow the inputs/params); param_dtype: parameter storage.
        """
        config = resolve_config(cfg)
        return cast_params(cls(config, rngs=trace_safe_rngs(rngs), dtype=dtype), param_dtype)

    def time_embed(self, timestep: jax.Array, added_time_ids: jax.Array, batch: int, dtype) -> jax.Array:
        """timestep: () or (B,); added_time_ids: (B, K) -> (B, E)."""
        t = jnp.broadcast_to(jnp.ravel(jnp.asarray(timestep)), (batch,))
        t_emb = timestep_embedding(t, self.config["block_out_channels"][0], flip_sin_to_cos=True,
                                   downscale_freq_shift=0)
        emb = self.time_embedding(t_emb.astype(dtype))
        ids = timestep_embedding(jnp.ravel(added_time_ids), self.config["addition_time_embed_dim"],
                                 flip_sin_to_cos=True, downscale_freq_shift=0)
        return emb + self.add_embedding(ids.reshape(batch, -1).astype(emb.dtype))

    def __call__(
        self,
        sample: jax.Array,
        timestep: jax.Array | float,
        encoder_hidden_states: jax.Array,
        added_time_ids: jax.Array,
        image_only_indicator: jax.Array | None = None,
        input_residual: jax.Array | None = None,
        **extra,
    ) -> jax.Array:
        """sample (B, F, H, W, C_in); timestep () or (B,); encoder_hidden_states (B, T, D), or
        (B, F, T, D) for a per-frame context;
        added_time_ids (B, K); image_only_indicator (B, F), 1 = still image (default zeros);
        input_residual (B*F, H, W, C0), added to conv_in's output (ETHD's pose guider)
        -> (B, F, H, W, C_out)."""
        b, f, h, w, _ = sample.shape
        if image_only_indicator is None:
            image_only_indicator = jnp.zeros((b, f), sample.dtype)
        emb = jnp.repeat(self.time_embed(timestep, added_time_ids, b, sample.dtype), f, axis=0)  # (B*F, E)
        if encoder_hidden_states.ndim == 4:  # per-frame context (B, F, T, D)
            context = encoder_hidden_states.reshape(b * f, *encoder_hidden_states.shape[2:])
        else:
            context = jnp.repeat(encoder_hidden_states, f, axis=0)  # (B*F, T, D)
        args = (emb, context, image_only_indicator)

        x = self.conv_in(sample.reshape(b * f, h, w, -1))
        if input_residual is not None:
            x = x + input_residual.astype(x.dtype)
        skips = (x,)
        for block in self.down_blocks:
            x, states = block(x, *args, **extra)
            skips += states
        x = self.mid_block(x, *args, **extra)

        factor = 2 ** (len(self.up_blocks) - 1)
        forward_size = h % factor != 0 or w % factor != 0
        for i, block in enumerate(self.up_blocks):
            k = len(block.resnets)
            res, skips = skips[-k:], skips[:-k]
            size = tuple(skips[-1].shape[1:3]) if forward_size and i < len(self.up_blocks) - 1 else None
            x = block(x, res, *args, upsample_size=size, **extra)

        x = self.conv_out(jax.nn.silu(self.conv_norm_out(x)))
        return x.reshape(b, f, h, w, -1)
