"""Stage-2 objective: ETHD's x0 loss (eq. 11) under SVD's EDM preconditioning.

Shape legend: B batch, F frames, H, W latent size, L lip tokens, Dl lip width, De expression width.

    sigma ~ exp(N(p_mean, p_std^2)),   x_t = x0 + sigma * n,
    D = c_skip x_t + c_out ETHD([c_in x_t, z_ref], c_noise, l_a, e_ref, e_dri)   (`edm.denoise`),
    L_de = mean_b lambda(sigma_b) * mean ||D - x0||^2,   lambda = (sigma^2 + 1) / sigma^2.
lambda is EDM's weight (unit-variance x0 error for sigma_data = 1); the paper writes the
unweighted x0 error, which is the same objective per noise level. p_mean = 0.7, p_std = 1.6
(`ethd_variants.TrainConfig`): SVD's high-resolution shift towards more noise.
e_dri = e_v with probability 0.6 per clip, else e_a (6.4). For classifier-free guidance the
lip tokens are dropped (zeroed) with p 0.05 and the expression condition (e_dri := e_ref)
with p 0.05, per clip (`drop_conditions`).

What trains in stage 2 (decision): V-AID, the audio encoder, the face encoders and the VAE
are frozen; their outputs enter as data, and the loss stops gradients at every condition
so none can leak into them even if they are computed inside the differentiated function.
The ETHD backbone trains whole (`stage2_trainable(True)`, the paper fine-tunes SVD with
Adam8bit at lr 1e-5); `stage2_trainable(False)` selects only the ETHD additions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.diffusion.edm import denoise, edm_loss_weight
from emotivetalk_jax.models.ethd import NEW_PARAMS

P_MEAN, P_STD, P_VIDEO_EXPR = 0.7, 1.6, 0.6
P_DROP_LIP, P_DROP_EXPR = 0.05, 0.05  # condition dropout, so the sampler's guidance has branches to contrast
P_DROP_POSE = 0.3  # the pose condition (when given) dropped per clip, so the backbone runs without one too


def stage2_trainable(train_backbone: bool = True) -> nnx.filterlib.Filter:
    """The ETHD parameters stage 2 updates: all of them, or only the EmotiveTalk additions."""
    return nnx.Param if train_backbone else NEW_PARAMS


class ETHDBatch(NamedTuple):
    latents: jax.Array  # (B, F, H, W, 4) x0: VAE latents of the clip times the scaling factor
    ref_latent: jax.Array  # (B, H, W, 4) VAE mode of the noise-augmented portrait, unscaled (SVD)
    lip_tokens: jax.Array  # (B, F, L, Dl) or (B, F, Dl): l_a of the frozen V-AID
    e_v: jax.Array  # (B, F, De) expression encoder latents of the clip
    e_a: jax.Array  # (B, F, De) V-AID's audio expression latents
    e_ref: jax.Array  # (B, De) expression latent of the portrait
    added_time_ids: jax.Array  # (B, 3) [fps - 1, motion bucket, noise aug]
    lip_mask: jax.Array  # (B, H, W, 1) 1 inside the lip box
    face_mask: jax.Array  # (B, H, W, 1) 1 inside the face box
    pose: jax.Array | None = None  # (B, F, 4) head pose relative to the reference (ETHDConfig.pose), or None


def sample_sigma(key: jax.Array, n: int, p_mean: float = P_MEAN, p_std: float = P_STD) -> jax.Array:
    """(n,) noise levels, log-normal: ln sigma ~ N(p_mean, p_std^2)."""
    return jnp.exp(p_mean + p_std * jax.random.normal(key, (n,)))


def choose_e_dri(key: jax.Array, e_v: jax.Array, e_a: jax.Array, p_video: float = P_VIDEO_EXPR) -> jax.Array:
    """Per clip: e_v with probability p_video, else e_a (both (B, F, ...))."""
    pick = jax.random.uniform(key, (e_v.shape[0],)) < p_video
    return jnp.where(pick.reshape((-1,) + (1,) * (e_v.ndim - 1)), e_v, e_a)


def drop_conditions(
    key: jax.Array, lip_tokens: jax.Array, e_dri: jax.Array, e_ref: jax.Array, p_lip: float, p_expr: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per clip, zero the lip tokens with probability p_lip and replace e_dri by e_ref with p_expr:
    -> (lip_tokens, e_dri, kept_expr (B,) bool, False where e_dri was replaced).

    These are the guidance branches' "unconditional" inputs (the pipeline builds the same):
    no lip condition = zero lip tokens; no expression condition = e_dri = e_ref, which makes
    EDI exactly zero.
    """
    k_lip, k_expr = jax.random.split(key)
    b = lip_tokens.shape[0]
    keep_lip = jax.random.uniform(k_lip, (b,)) >= p_lip
    lip_tokens = lip_tokens * keep_lip.reshape((-1,) + (1,) * (lip_tokens.ndim - 1)).astype(lip_tokens.dtype)
    drop_expr = jax.random.uniform(k_expr, (b,)) < p_expr
    ref = jnp.broadcast_to(e_ref[:, None], e_dri.shape)
    e_dri = jnp.where(drop_expr.reshape((-1,) + (1,) * (e_dri.ndim - 1)), ref, e_dri)
    return lip_tokens, e_dri, ~drop_expr


def x0_loss(denoised: jax.Array, x0: jax.Array, sigma: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """lambda(sigma)-weighted MSE of D against x0, averaged per clip, then over the batch.

    denoised / x0 (B, F, H, W, C); sigma (B,); mask (B, H, W, 1) restricts the error to a
    region (the dropout losses of 6.1), averaged over the region's cells, or, with values
    other than 0 / 1, weights it (a weighted mean).
    """
    err = jnp.square(denoised.astype(jnp.float32) - x0.astype(jnp.float32))
    if mask is None:
        per_clip = jnp.mean(err, axis=tuple(range(1, err.ndim)))
    else:
        m = jnp.broadcast_to(mask[:, None].astype(jnp.float32), err.shape)
        per_clip = jnp.sum(err * m, axis=tuple(range(1, err.ndim))) / jnp.maximum(
            jnp.sum(m, axis=tuple(range(1, err.ndim))), 1.0)
    return jnp.mean(edm_loss_weight(sigma) * per_clip)


def region_weight(lip_mask: jax.Array, face_mask: jax.Array, lip_weight: float = 1.0,
                  face_weight: float = 1.0) -> jax.Array | None:
    """Per-pixel loss weight (B, H, W, 1): `lip_weight` inside the lip box, `face_weight` in the
    rest of the face box, 1 outside; None when both are 1 (the unweighted mean)."""
    if lip_weight == 1.0 and face_weight == 1.0:
        return None
    return 1.0 + (face_weight - 1.0) * face_mask * (1.0 - lip_mask) + (lip_weight - 1.0) * lip_mask


def ethd_denoise(
    backbone: Callable[..., jax.Array], x_t: jax.Array, sigma: jax.Array, ref_latent: jax.Array,
    lip_tokens: jax.Array, added_time_ids: jax.Array, e_dri: jax.Array, e_ref: jax.Array,
    lip_mask: jax.Array | None, face_mask: jax.Array | None, pose: jax.Array | None = None,
    pose_keep: jax.Array | None = None,
) -> jax.Array:
    """D(x_t; sigma) (B, F, H, W, 4): the backbone sees [c_in x_t, z_ref repeated over frames]
    (and, when given, the pose (B, F, 4) with its per-clip keep (B,): ETHD's pose guider)."""
    extra = {} if pose is None else {"pose": pose, "pose_keep": pose_keep}

    def raw(scaled: jax.Array, c_noise: jax.Array) -> jax.Array:
        ref = jnp.broadcast_to(ref_latent[:, None].astype(scaled.dtype), scaled.shape[:-1] + ref_latent.shape[-1:])
        sample = jnp.concatenate([scaled, ref], axis=-1)
        return backbone(sample, c_noise, lip_tokens, added_time_ids, e_dri, e_ref, lip_mask, face_mask, **extra)

    return denoise(raw, x_t, sigma)


def ethd_loss(
    backbone: Callable[..., jax.Array], batch: ETHDBatch, key: jax.Array, *,
    p_mean: float = P_MEAN, p_std: float = P_STD, p_video: float = P_VIDEO_EXPR,
    p_drop_lip: float = P_DROP_LIP, p_drop_expr: float = P_DROP_EXPR, lip_weight: float = 1.0,
    face_weight: float = 1.0, p_drop_pose: float = P_DROP_POSE,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Eq. 11 on one batch. `backbone`: an `ETHD` (or any callable with its signature).
    `lip_weight` > 1 weights the error inside the lip box (`batch.lip_mask`) that much more
    than elsewhere, `face_weight` the rest of the face box (brows, eyes, cheeks: where the
    expression shows), both as a weighted mean so the loss scale stays that of eq. 11 (not in
    the paper; `region_weight`). With `batch.pose` the pose condition is dropped per clip with
    probability `p_drop_pose` (not in the paper).

    Returns (loss, aux) with aux = sigma (B,), used_e_v (B,), kept_expr (B,: False where the
    expression condition was dropped to e_ref) and the denoised clip.
    """
    batch = ETHDBatch(*(jax.lax.stop_gradient(x) for x in batch))  # conditions are data (frozen models)
    k_sigma, k_noise, k_expr, k_drop = jax.random.split(key, 4)
    x0 = batch.latents
    sigma = sample_sigma(k_sigma, x0.shape[0], p_mean, p_std)
    x_t = x0 + sigma.reshape(-1, *(1,) * (x0.ndim - 1)).astype(x0.dtype) * jax.random.normal(k_noise, x0.shape, x0.dtype)
    e_dri = choose_e_dri(k_expr, batch.e_v, batch.e_a, p_video)
    used_e_v = jnp.all(e_dri == batch.e_v, axis=tuple(range(1, e_dri.ndim)))
    lip_tokens, e_dri, kept_expr = drop_conditions(k_drop, batch.lip_tokens, e_dri, batch.e_ref, p_drop_lip,
                                                   p_drop_expr)
    pose_keep = None
    if batch.pose is not None:
        pose_keep = (jax.random.uniform(jax.random.fold_in(k_drop, 1), (x0.shape[0],)) >= p_drop_pose).astype(x0.dtype)
    d = ethd_denoise(backbone, x_t, sigma, batch.ref_latent, lip_tokens, batch.added_time_ids, e_dri,
                     batch.e_ref, batch.lip_mask, batch.face_mask, batch.pose, pose_keep)
    weight = region_weight(batch.lip_mask, batch.face_mask, lip_weight, face_weight)
    return x0_loss(d, x0, sigma, weight), dict(sigma=sigma, used_e_v=used_e_v, kept_expr=kept_expr, denoised=d)


def expression_consistency(e_hat: jax.Array, e_v: jax.Array, e_ref: jax.Array, keep: jax.Array) -> jax.Array:
    """Relative expression error of a denoised clip: sum |e_hat - e_v|^2 / sum |e_ref - e_v|^2
    over the clips in `keep`, so 0 is the clip's own expression and 1 is the neutral
    portrait's (what a model that copies the reference scores).

    e_hat / e_v (B, F, De): the expression encoder on the decoded D and on the ground truth;
    e_ref (B, De) the portrait's; keep (B,) bool: clips whose expression condition was kept
    (a dropped one has no expression to match). The denominator has a floor of 1% of the kept
    clips' |e_v|^2, so a batch of neutral clips (e_v close to e_ref) does not divide by ~0.
    Not in the paper (`expression_loss_weight`).
    """
    k = keep.astype(jnp.float32).reshape(-1, 1, 1)
    e_v = e_v.astype(jnp.float32)
    num = jnp.sum(k * jnp.square(e_hat.astype(jnp.float32) - e_v))
    den = jnp.sum(k * jnp.square(jnp.broadcast_to(e_ref[:, None].astype(jnp.float32), e_v.shape) - e_v))
    return num / jnp.maximum(den, 1e-2 * jnp.sum(k * jnp.square(e_v)) + 1e-6)
