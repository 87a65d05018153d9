"""Lip and expression encoders (PD-FGC style, 6.1) and the small renderer used to pretrain them.

Shape legend: B batch, F frames, H, W image size (channels-last, RGB in [-1, 1]),
C channels, Dl lip latent width, De expression latent width.

PD-FGC's motion encoder is one face backbone (FAN) giving a 512-d feature and per-motion
heads: `to_mouth` (its output is the lip latent) and `to_emo` -> `emo_embed` (the 30-d
expression latent). EmotiveTalk adds trainable adapters BEFORE the encoder: here a
residual conv adapter on the image per branch (`lip_adapter`, `expression_adapter`), so the
backbone runs once per branch. Our backbone is a small residual conv net, not FAN (no FAN
port here); PD-FGC's BatchNorm1d in the heads is a LayerNorm (no batch statistics).

Aligned encoders (`FaceEncoderConfig.aligned`, issue 30): every image is first warped so its
face's rigid landmarks sit on the canonical face's (`models.face_align.align_faces`), so the latents
carry the mouth and the expression, not the head's roll, shift or scale. They then need each
image's 68 landmarks (pixel (x, y) in the image as given), and refuse to run without them;
encoders with `aligned` off ignore landmarks and run exactly as before.

Pretraining (self-driven dropout reconstruction, Fig. 8): the paper renders with the ETHD
backbone; we use `ReconstructionDecoder`, a small conv net that reconstructs the driving
frame from the reference frame, FiLM-modulated by the (possibly dropped) latents; a dropped
latent is replaced by a learned null vector.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.models.face_align import align_faces
from emotivetalk_jax.models.layers import conv, group_norm, layer_norm, linear
from emotivetalk_jax.models.vaid_variants import DecoderConfig, FaceEncoderConfig


# Stage-0 dropout configurations (6.1, Fig. 8), one per sample.
DROP_LIP, DROP_EXPRESSION, USE_BOTH = 0, 1, 2


def dropout_keep(configs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B,) configurations -> (keep_lip, keep_expression) booleans (B,)."""
    return configs != DROP_LIP, configs != DROP_EXPRESSION


def _norm(c: int, rngs: nnx.Rngs) -> nnx.GroupNorm:
    return group_norm(c, eps=1e-6, groups=math.gcd(32, c), rngs=rngs)


class ResBlock(nnx.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus the input."""

    def __init__(self, c: int, *, rngs: nnx.Rngs):
        self.norm1, self.conv1 = _norm(c, rngs), conv(c, c, 3, padding=1, rngs=rngs)
        self.norm2, self.conv2 = _norm(c, rngs), conv(c, c, 3, padding=1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        return x + self.conv2(jax.nn.silu(self.norm2(h)))


class ImageAdapter(nnx.Module):
    """Residual image-space adapter (B, H, W, 3) -> (B, H, W, 3)."""

    def __init__(self, c: int, *, rngs: nnx.Rngs):
        self.conv_in = conv(3, c, 3, padding=1, rngs=rngs)
        self.conv_out = conv(c, 3, 3, padding=1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.conv_out(jax.nn.silu(self.conv_in(x)))


class FaceBackbone(nnx.Module):
    """(B, H, W, 3) -> (B, feature_dim): conv stem, strided stages with a res block, then a mean
    pool (`pool="mean"`) or the whole flattened map (`pool="flatten"`, needs `image_size`) into
    the projection."""

    def __init__(self, channels: tuple[int, ...], feature_dim: int, *, pool: str = "mean",
                 image_size: int = 0, rngs: nnx.Rngs):
        if pool not in ("mean", "flatten"):
            raise ValueError(f"unknown pool {pool!r}; choose mean or flatten")
        self.pool = pool
        self.conv_in = conv(3, channels[0], 3, stride=2, padding=1, rngs=rngs)
        self.blocks = nnx.List([ResBlock(channels[0], rngs=rngs)])
        self.downs = nnx.List([])
        for c_in, c_out in zip(channels, channels[1:]):
            self.downs.append(conv(c_in, c_out, 3, stride=2, padding=1, rngs=rngs))
            self.blocks.append(ResBlock(c_out, rngs=rngs))
        self.norm_out = _norm(channels[-1], rngs)
        side = -(-image_size // 2 ** len(channels))  # the last map's side (convs pad by 1)
        width = channels[-1] * (side * side if pool == "flatten" else 1)
        self.proj = linear(width, feature_dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.blocks[0](self.conv_in(x))
        for down, block in zip(self.downs, self.blocks[1:]):
            h = block(down(h))
        h = jax.nn.silu(self.norm_out(h))
        return self.proj(h.reshape(h.shape[0], -1) if self.pool == "flatten" else h.mean(axis=(1, 2)))


class Head(nnx.Module):
    """PD-FGC motion head: Linear -> ReLU -> norm -> Linear."""

    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
        self.fc1 = linear(din, din, rngs=rngs)
        self.norm = layer_norm(din, rngs=rngs)
        self.fc2 = linear(din, dout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.norm(jax.nn.relu(self.fc1(x))))


NEEDS_LANDMARKS = ("these face encoders read landmark-aligned faces (aligned in their config) and need the 68 "
                   "landmarks of every image they encode; none were given")


class FaceEncoders(nnx.Module):
    """Images (..., H, W, 3) -> l_v (..., Dl), e_v (..., De); e_ref = encode_expression(x_ref).
    `landmarks` (..., 68, 2): each image's, required when `cfg.aligned`, ignored otherwise."""

    def __init__(self, cfg: FaceEncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.lip_adapter = ImageAdapter(cfg.adapter_channels, rngs=rngs)
        self.expression_adapter = ImageAdapter(cfg.adapter_channels, rngs=rngs)
        self.backbone = FaceBackbone(cfg.backbone_channels, cfg.feature_dim, pool=cfg.pool,
                                     image_size=cfg.image_size, rngs=rngs)
        self.to_mouth = Head(cfg.feature_dim, cfg.lip_dim, rngs=rngs)
        self.to_emo = Head(cfg.feature_dim, cfg.feature_dim, rngs=rngs)
        self.emo_embed = linear(cfg.feature_dim, cfg.expr_dim, rngs=rngs)

    @classmethod
    def from_config(cls, cfg: FaceEncoderConfig, *, rngs: nnx.Rngs) -> "FaceEncoders":
        return cls(cfg, rngs=rngs)

    def _prepare(self, images: jax.Array, landmarks: jax.Array | None) -> tuple[jax.Array, tuple[int, ...]]:
        lead = images.shape[:-3]
        x = images.reshape(-1, *images.shape[-3:])
        if getattr(self.cfg, "aligned", False):
            if landmarks is None:
                raise ValueError(NEEDS_LANDMARKS)
            x = align_faces(x, jnp.reshape(landmarks, (-1, 68, 2))).astype(x.dtype)
        s = self.cfg.image_size
        if x.shape[1:3] != (s, s):
            x = jax.image.resize(x, (x.shape[0], s, s, x.shape[-1]), "bilinear")
        return x, lead

    def encode_lip(self, images: jax.Array, landmarks: jax.Array | None = None) -> jax.Array:
        x, lead = self._prepare(images, landmarks)
        return self.to_mouth(self.backbone(self.lip_adapter(x))).reshape(*lead, -1)

    def encode_expression(self, images: jax.Array, landmarks: jax.Array | None = None) -> jax.Array:
        x, lead = self._prepare(images, landmarks)
        feat = self.to_emo(self.backbone(self.expression_adapter(x)))
        return self.emo_embed(jax.nn.relu(feat)).reshape(*lead, -1)

    def __call__(self, images: jax.Array, landmarks: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        return self.encode_lip(images, landmarks), self.encode_expression(images, landmarks)


def _upsample(x: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ReconstructionDecoder(nnx.Module):
    """x_ref (B, H, W, 3), l (B, Dl), e (B, De), keep flags (B,) -> driving frame (B, H, W, 3).

    A conv U-Net-less hourglass: stride-2 convs down, FiLM from [l, e] at the bottleneck,
    nearest-upsample + conv back up, a skip from the same resolution at each level.
    H and W must divide by 2 ** (len(channels) - 1).
    """

    def __init__(self, cfg: DecoderConfig, lip_dim: int, expr_dim: int, *, rngs: nnx.Rngs):
        ch = cfg.channels
        self.residual = bool(getattr(cfg, "residual", False))
        self.null_lip = nnx.Param(jnp.zeros((lip_dim,)))
        self.null_expression = nnx.Param(jnp.zeros((expr_dim,)))
        self.conv_in = conv(3, ch[0], 3, padding=1, rngs=rngs)
        self.downs = nnx.List([conv(a, b, 3, stride=2, padding=1, rngs=rngs) for a, b in zip(ch, ch[1:])])
        self.cond_proj = linear(lip_dim + expr_dim, 2 * ch[-1], rngs=rngs)
        self.mid = ResBlock(ch[-1], rngs=rngs)
        self.ups = nnx.List([conv(b + a, a, 3, padding=1, rngs=rngs) for a, b in zip(ch, ch[1:])][::-1])
        self.norm_out = _norm(ch[0], rngs)
        self.conv_out = conv(ch[0], 3, 3, padding=1, rngs=rngs)

    @classmethod
    def from_config(cls, cfg: DecoderConfig, lip_dim: int, expr_dim: int, *, rngs: nnx.Rngs):
        return cls(cfg, lip_dim, expr_dim, rngs=rngs)

    def __call__(self, x_ref: jax.Array, l: jax.Array, e: jax.Array, keep_lip: jax.Array, keep_expr: jax.Array) -> jax.Array:
        l = jnp.where(keep_lip[:, None], l, self.null_lip[...])
        e = jnp.where(keep_expr[:, None], e, self.null_expression[...])
        h = jax.nn.silu(self.conv_in(x_ref))
        skips = [h]
        for down in self.downs:
            h = jax.nn.silu(down(h))
            skips.append(h)
        scale, shift = jnp.split(self.cond_proj(jnp.concatenate([l, e], axis=-1)), 2, axis=-1)
        h = self.mid(h * (1 + scale[:, None, None]) + shift[:, None, None])
        for up, skip in zip(self.ups, skips[-2::-1]):
            h = jax.nn.silu(up(jnp.concatenate([_upsample(h), skip], axis=-1)))
        out = self.conv_out(jax.nn.silu(self.norm_out(h)))
        return x_ref + out if self.residual else out


class EncoderPretrainer(nnx.Module):
    """Stage 0: encoders + renderer. (x_ref, x_drv (B, H, W, 3), configs (B,)) -> (B, H, W, 3),
    and optionally the readouts of two linear heads: emotion logits (B, emotions) on e_v
    (`emotions` > 0, `LossConfig.emotion_label_weight`) and a mouth opening (B,) on l_v
    (`opening_head`, `LossConfig.lip_opening_weight`); None where absent."""

    def __init__(self, face: FaceEncoderConfig, decoder: DecoderConfig, *, emotions: int = 0,
                 opening_head: bool = False, rngs: nnx.Rngs):
        self.encoders = FaceEncoders(face, rngs=rngs)
        self.decoder = ReconstructionDecoder(decoder, face.lip_dim, face.expr_dim, rngs=rngs)
        self.emotion_head = linear(face.expr_dim, emotions, rngs=rngs) if emotions else None
        self.opening_head = linear(face.lip_dim, 1, rngs=rngs) if opening_head else None

    @classmethod
    def from_config(cls, variant, *, emotions: int = 0, opening_head: bool = False, rngs: nnx.Rngs) -> "EncoderPretrainer":
        return cls(variant.face, variant.decoder, emotions=emotions, opening_head=opening_head, rngs=rngs)

    def reconstruct(self, x_ref: jax.Array, x_drv: jax.Array, configs: jax.Array, landmarks: jax.Array | None = None):
        """(driving frame prediction, emotion logits or None, mouth opening or None); `landmarks`
        (B, 68, 2) the driving frames' (aligned encoders; the renderer's frames are then the
        aligned ones: `x_ref` aligned, the prediction compared with the aligned driving frame)."""
        l, e = self.encoders(x_drv, landmarks)
        keep_lip, keep_expr = dropout_keep(configs)
        logits = self.emotion_head(e) if self.emotion_head is not None else None
        opening = self.opening_head(l)[..., 0] if self.opening_head is not None else None
        return self.decoder(x_ref, l, e, keep_lip, keep_expr), logits, opening

    def __call__(self, x_ref: jax.Array, x_drv: jax.Array, configs: jax.Array) -> jax.Array:
        return self.reconstruct(x_ref, x_drv, configs)[0]


def stage0_trainable(cfg: FaceEncoderConfig) -> nnx.filterlib.Filter:
    """Parameters stage 0 trains: adapters + renderer, and the backbone/heads unless frozen."""
    if cfg.train_backbone:
        return nnx.Param
    parts = nnx.Any(nnx.PathContains("lip_adapter"), nnx.PathContains("expression_adapter"), nnx.PathContains("decoder"),
                    nnx.PathContains("emotion_head"), nnx.PathContains("opening_head"))
    return nnx.All(nnx.Param, parts)
