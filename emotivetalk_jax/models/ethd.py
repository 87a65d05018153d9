"""ETHD, the emotional talking-head diffusion backbone (3.3): SVD's UNet with lip
cross-attention, the Expression Decoupling Injector (EDI) and temporal expression
cross-attention.

Shape legend: B batch, F frames, H, W latent size (h, w at a UNet level, S = h * w),
C channels, L lip tokens per frame, Dl lip width, Nl context tokens per lip token, D
context width (SVD's 1024), Ne expression latents per frame (1 for V-AID's e_a / e_v),
De their width, Nt tokens each expression latent expands into, T = Ne * Nt expression
tokens per frame, Dx their width.

What ETHD adds to SVD (names = NNX paths, all listed in `NEW_KEYS`):
- `lip_proj`: Linear(Dl -> Nl * D), each lip token split into Nl context tokens. The
  tokens of frame f are the context of SVD's spatial attn2 for frame f (they take CLIP's
  place; with a single key, as SVD's one CLIP token, softmax is 1 and attn2's to_q, to_k
  and norm2 get no gradient, hence Nl > 1). SVD's temporal attn2 gets the clip's mean
  over frames, computed as `c_0 + mean_f(c_f - c_0)` so that it is bitwise the first
  frame's context (what diffusers uses) when all frames are the same.
- `expr_proj`: Linear(De -> Nt * Dx) + LayerNorm(Dx), shared by e_dri and e_ref.
- spatial blocks, after attn2: `edi` (eq. 9-10),
  `H += to_out(Attn(norm(H), e_dri) - Attn(norm(H), e_ref)) * (1 - M_lip) * M_face`,
  one attention for both branches (so e_dri == e_ref gives exactly zero), no output bias
  (it would cancel);
- temporal blocks, after attn2: `temporal_expr_norm` + `temporal_expr_attn`, each spatial
  position's frame sequence attends to the e_dri tokens of all frames (plus a sinusoidal
  frame position), gated by the same masks;
- with `ETHDConfig.pose` (beyond the paper): `pose_guider`, per-frame head-pose maps through a
  small conv net added after conv_in (`models.pose_guider`), output conv zero at init.
The EDI, temporal expression and pose guider output kernels start at zero, so a fresh ETHD computes
exactly what its SVD UNet computes. Masks are given at latent resolution and max-pooled
(kernel 2, stride 2, SAME) to every UNet level: a cell is inside a box if any pixel is.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.models.attention import attend
from emotivetalk_jax.models.ethd_variants import ETHDConfig
from emotivetalk_jax.models.pose_guider import PoseGuider, pose_maps
from emotivetalk_jax.models.layers import Attention, cast_params, layer_norm, linear, timestep_embedding, trace_safe_rngs
from emotivetalk_jax.models.transformer import (
    BasicTransformerBlock,
    TemporalBasicTransformerBlock,
    TransformerSpatioTemporalModel,
)
from emotivetalk_jax.models.unet import UNetSpatioTemporal, resolve_config

NEW_KEYS = ("lip_proj", "expr_proj", "edi", "temporal_expr_norm", "temporal_expr_attn", "pose_guider")
NEW_PARAMS = nnx.All(nnx.Param, nnx.Any(*(nnx.PathContains(k) for k in NEW_KEYS)))
SVD_PARAMS = nnx.All(nnx.Param, nnx.Not(NEW_PARAMS))
ZERO_OUT = ("edi", "temporal_expr_attn", "pose_guider")  # their to_out(.0).kernel starts at zero


def _zero_out(attn: Attention) -> None:
    k = attn.to_out[0].kernel
    k.value = jnp.zeros_like(k.value)


def _heads(attn: Attention, t: jax.Array) -> jax.Array:
    return t.reshape(*t.shape[:-1], attn.heads, t.shape[-1] // attn.heads)


def _attend(attn: Attention, q: jax.Array, context: jax.Array) -> jax.Array:
    """Attention core without to_out: q (N, S, heads, dh), context (N, T, Dc) -> (N, S, inner)."""
    k, v = _heads(attn, attn.to_k(context)), _heads(attn, attn.to_v(context))
    out = attend(q, k, v, implementation=attn.attention_impl)
    return out.reshape(*out.shape[:-2], -1)


def _pool_to(mask: jax.Array, hw: tuple[int, int]) -> jax.Array:
    """Max-pool a (B, H, W, 1) mask by 2 (SAME) until it is (B, h, w, 1), as the UNet downsamples."""
    while tuple(mask.shape[1:3]) != tuple(hw):
        if mask.shape[1] < hw[0] or mask.shape[2] < hw[1] or mask.shape[1:3] == (1, 1):
            raise ValueError(f"mask of size {mask.shape[1:3]} does not pool to the UNet level size {hw}")
        mask = jax.lax.reduce_window(mask, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")
    return mask


class TokenProjection(nnx.Module):
    """(..., N, Din) -> (..., N * K, Dout): one Linear whose output splits into K tokens, then an
    optional LayerNorm. `lip_proj` (no norm) and `expr_proj` (norm) are these."""

    def __init__(self, din: int, tokens: int, dout: int, *, norm: bool, rngs: nnx.Rngs, dtype=None):
        self.tokens = tokens
        self.proj = linear(din, tokens * dout, rngs=rngs, dtype=dtype)
        self.norm = layer_norm(dout, rngs=rngs, dtype=dtype) if norm else None

    def __call__(self, x: jax.Array) -> jax.Array:
        t = self.proj(x)
        t = t.reshape(*t.shape[:-2], t.shape[-2] * self.tokens, -1)
        return t if self.norm is None else self.norm(t)


class ExpressionDecouplingInjector(nnx.Module):
    """`edi` (eq. 9): x (N, S, C), e_dri / e_ref (N, T, Dx) -> to_out(Attn(e_dri) - Attn(e_ref)) (N, S, C).

    Both branches share norm, to_q, to_k, to_v and to_out; to_out has no bias (it cancels)
    and a zero kernel at initialisation. The caller applies the mask gate (eq. 10).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int, *, rngs: nnx.Rngs, dtype=None):
        self.norm = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.attn = Attention(dim, heads=heads, dim_head=head_dim, cross_attention_dim=context_dim, out_bias=False,
                              rngs=rngs, dtype=dtype)
        _zero_out(self.attn)

    def __call__(self, x: jax.Array, e_dri: jax.Array, e_ref: jax.Array) -> jax.Array:
        q = _heads(self.attn, self.attn.to_q(self.norm(x)))
        return self.attn.to_out[0](_attend(self.attn, q, e_dri) - _attend(self.attn, q, e_ref))


class ETHDSpatialBlock(BasicTransformerBlock):
    """SVD's spatial block (attn2's context = the frame's projected lip tokens) + EDI after attn2.

    x (B*F, S, C); context (B*F, L, D); edi_dri / edi_ref (B*F, T, Dx); spatial_gate (B*F, S, 1).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, *, cross_attention_dim: int | None, ethd: ETHDConfig,
                 rngs: nnx.Rngs, dtype=None):
        super().__init__(dim, heads, head_dim, cross_attention_dim=cross_attention_dim, rngs=rngs, dtype=dtype)
        self.edi = (
            ExpressionDecouplingInjector(dim, heads, head_dim, ethd.expr_context_dim, rngs=rngs, dtype=dtype)
            if ethd.edi else None
        )

    def after_cross_attention(self, x: jax.Array, *, edi_dri: jax.Array, edi_ref: jax.Array,
                              spatial_gate: jax.Array, **_) -> jax.Array:
        if self.edi is not None:
            x = x + self.edi(x, edi_dri, edi_ref) * spatial_gate
        return x


class ETHDTemporalBlock(TemporalBasicTransformerBlock):
    """SVD's temporal block + cross-attention to the e_dri tokens after attn2.

    x (B*F, S, C) (regrouped to (B*S, F, C) inside); context (B*S, L, D) for attn2;
    temporal_expr_context (B, F*T, Dx); temporal_gate (B*S, 1, 1).
    """

    def __init__(self, dim: int, time_mix_inner_dim: int, heads: int, head_dim: int, *,
                 cross_attention_dim: int | None, ethd: ETHDConfig, rngs: nnx.Rngs, dtype=None):
        super().__init__(dim, time_mix_inner_dim, heads, head_dim, cross_attention_dim=cross_attention_dim,
                         rngs=rngs, dtype=dtype)
        inner = time_mix_inner_dim
        if ethd.temporal_expr:
            self.temporal_expr_norm = layer_norm(inner, rngs=rngs, dtype=dtype)
            self.temporal_expr_attn = Attention(inner, heads=heads, dim_head=head_dim,
                                                cross_attention_dim=ethd.expr_context_dim, rngs=rngs, dtype=dtype)
            _zero_out(self.temporal_expr_attn)
        else:
            self.temporal_expr_norm = self.temporal_expr_attn = None

    def after_cross_attention(self, x: jax.Array, batch: int, *, temporal_expr_context: jax.Array,
                              temporal_gate: jax.Array, **_) -> jax.Array:
        if self.temporal_expr_attn is None:
            return x
        # Every (position, frame) query of a video attends to the same F*T tokens.
        q = self.temporal_expr_norm(x).reshape(batch, -1, x.shape[-1])
        delta = self.temporal_expr_attn(q, temporal_expr_context).reshape(x.shape)
        return x + delta * temporal_gate


class ETHDTransformer(TransformerSpatioTemporalModel):
    """SVD's spatio-temporal transformer with ETHD blocks; pools the masks to its level.

    x (B*F, h, w, C); lip_mask / face_mask (B, H, W, 1) at latent resolution.
    """

    def __init__(self, heads: int, head_dim: int, in_channels: int, *, ethd: ETHDConfig, num_layers: int = 1,
                 cross_attention_dim: int | None = None, rngs: nnx.Rngs, dtype=None):
        self.ethd = ethd
        super().__init__(heads, head_dim, in_channels, num_layers=num_layers,
                         cross_attention_dim=cross_attention_dim, rngs=rngs, dtype=dtype)

    @property
    def spatial_block_cls(self):
        return functools.partial(ETHDSpatialBlock, ethd=self.ethd)

    @property
    def temporal_block_cls(self):
        return functools.partial(ETHDTemporalBlock, ethd=self.ethd)

    def temporal_context(self, context: jax.Array) -> jax.Array:
        """Mean over frames (B, F, T, D) -> (B, T, D), bitwise the first frame's if all frames are equal."""
        first = context[:, 0]
        return first + jnp.mean(context - first[:, None], axis=1)

    def __call__(self, x: jax.Array, context: jax.Array | None, image_only_indicator: jax.Array, *,
                 lip_mask: jax.Array, face_mask: jax.Array, **extra) -> jax.Array:
        bf, h, w, _ = x.shape
        b, f = image_only_indicator.shape
        gate = (1.0 - _pool_to(lip_mask, (h, w))) * _pool_to(face_mask, (h, w))
        gate = gate.reshape(b, h * w, 1).astype(x.dtype)
        return super().__call__(
            x, context, image_only_indicator, spatial_gate=jnp.repeat(gate, f, axis=0),
            temporal_gate=gate.reshape(b * h * w, 1, 1), **extra,
        )


class ETHD(UNetSpatioTemporal):
    """The ETHD backbone. Build with `from_svd_config` (fresh) or `convert.ethd.inherit_svd` /
    `convert.ethd.load_ethd_from_svd` (inheriting every SVD tensor)."""

    def __init__(self, config: dict, ethd: ETHDConfig, *, rngs: nnx.Rngs, dtype=None):
        """`config`: a resolved SVD UNet config (`unet.resolve_config`)."""
        xdim = config["cross_attention_dim"]
        if not isinstance(xdim, int):
            if len(set(xdim)) != 1:
                raise ValueError(f"ETHD needs one context width for the lip tokens; cross_attention_dim={xdim}")
            xdim = xdim[0]
        self.ethd_config = ethd
        super().__init__(config, rngs=rngs, dtype=dtype)
        self.lip_proj = TokenProjection(ethd.lip_dim, ethd.lip_context_tokens, xdim, norm=False, rngs=rngs, dtype=dtype)
        self.expr_proj = TokenProjection(ethd.expr_dim, ethd.expr_tokens, ethd.expr_context_dim, norm=True, rngs=rngs,
                                         dtype=dtype)
        self.pose_guider = (PoseGuider(config["block_out_channels"][0], ethd.pose_hidden, rngs=rngs, dtype=dtype)
                            if ethd.pose else None)

    @property
    def transformer_cls(self):
        return functools.partial(ETHDTransformer, ethd=self.ethd_config)

    @classmethod
    def from_svd_config(cls, svd_unet_cfg: dict, ethd_cfg: ETHDConfig, *, rngs: nnx.Rngs, dtype=None,
                        param_dtype=jnp.float32) -> ETHD:
        """A freshly initialised ETHD from a diffusers UNet config dict (random SVD part)."""
        model = cls(resolve_config(svd_unet_cfg), ethd_cfg, rngs=trace_safe_rngs(rngs), dtype=dtype)
        return cast_params(model, param_dtype)

    def __call__(
        self,
        sample: jax.Array,
        c_noise: jax.Array,
        lip_tokens: jax.Array,
        added_time_ids: jax.Array,
        e_dri: jax.Array,
        e_ref: jax.Array,
        lip_mask: jax.Array | None = None,
        face_mask: jax.Array | None = None,
        image_only_indicator: jax.Array | None = None,
        pose: jax.Array | None = None,
        pose_keep: jax.Array | None = None,
    ) -> jax.Array:
        """sample (B, F, H, W, 8) = [c_in * noisy latent, reference latent]; c_noise () or (B,);
        lip_tokens (B, F, L, Dl) or (B, F, Dl); added_time_ids (B, 3); e_dri (B, F, De) or
        (B, F, Ne, De); e_ref (B, De) or (B, Ne, De); lip_mask / face_mask (B, H, W, 1), 1 inside
        the box (defaults: no lip box, whole frame is face); pose (B, F, 4) relative to the
        reference (read only with `ETHDConfig.pose`; None: no pose condition), pose_keep (B,)
        multiplies the guider's residual per video (0: the condition dropped) -> (B, F, H, W, 4)."""
        b, f, h, w, _ = sample.shape
        lip_tokens = lip_tokens[:, :, None] if lip_tokens.ndim == 3 else lip_tokens
        context = self.lip_proj(lip_tokens)  # (B, F, L * Nl, D)
        e_dri = e_dri[:, :, None] if e_dri.ndim == 3 else e_dri
        e_ref = e_ref[:, None] if e_ref.ndim == 2 else e_ref
        dri = self.expr_proj(e_dri)  # (B, F, T, Dx)
        ref = jnp.broadcast_to(self.expr_proj(e_ref)[:, None], dri.shape)
        temporal = dri
        if self.ethd_config.temporal_expr_positions:
            pos = timestep_embedding(jnp.arange(f), dri.shape[-1], flip_sin_to_cos=True, downscale_freq_shift=0)
            temporal = dri + pos[None, :, None].astype(dri.dtype)
        if lip_mask is None:
            lip_mask = jnp.zeros((b, h, w, 1), sample.dtype)
        if face_mask is None:
            face_mask = jnp.ones((b, h, w, 1), sample.dtype)
        residual = None
        if self.pose_guider is not None and pose is not None:
            residual = self.pose_guider(pose_maps(pose, face_mask, (h, w)).reshape(b * f, h, w, -1).astype(
                sample.dtype))
            if pose_keep is not None:
                residual = residual * jnp.repeat(pose_keep.astype(residual.dtype), f)[:, None, None, None]
        return super().__call__(
            sample, c_noise, context, added_time_ids, image_only_indicator, input_residual=residual,
            lip_mask=lip_mask, face_mask=face_mask,
            edi_dri=dri.reshape(b * f, *dri.shape[2:]), edi_ref=ref.reshape(b * f, *ref.shape[2:]),
            temporal_expr_context=temporal.reshape(b, -1, temporal.shape[-1]),
        )
