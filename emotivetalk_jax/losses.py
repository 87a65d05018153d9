"""Training losses, as pure functions of arrays (and of callables for the model terms).

Sections: lip (eq. 4-6), CLUB (3.2), Di-CTE (eq. 7), V-AID's stage-1 objectives (eq. 8),
encoder pretraining (6.1).
Shape legend: B batch, F frames, N pairs/frames, D width, E expression width,
H, W image size, C channels.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from emotivetalk_jax.diffusion.dicte import add_noise, edges
from emotivetalk_jax.models.dicte import DiCTECond, Denoiser
from emotivetalk_jax.models.face_encoders import DROP_EXPRESSION, DROP_LIP, USE_BOTH, dropout_keep  # noqa: F401
from emotivetalk_jax.models.layers import frozen
from emotivetalk_jax.models.vaid import VAID, VAIDBatch

# ---------------------------------------------------------------------------- lip (eq. 4-6)


def info_nce(a: jax.Array, b: jax.Array, tau: float) -> jax.Array:
    """InfoNCE of (N, D) anchors `a` against (N, D) targets `b`, positives on the diagonal.

    -1/N sum_i log softmax_j(cos(a_i, b_j) / tau)[i] (eq. 4; its denominator sums over j).
    Aligned pairs at small tau give ~0; unrelated pairs give ~log N.
    """
    a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-8)
    b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-8)
    logits = (a @ b.T) / tau
    return -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=-1)))


def lip_loss(l_a: jax.Array, l_v: jax.Array, *, alpha: float, beta: float, tau: float) -> jax.Array:
    """alpha * InfoNCE + beta * MSE (eq. 6) for (B, F, D) or (F, D) latents.

    InfoNCE runs over the frames of each clip (eq. 4: negatives are the clip's other frames)
    and is averaged over clips; MSE (eq. 5) is the mean over all elements (eq. 5 sums over D;
    the difference is a constant factor absorbed by beta).
    """
    a, b = l_a.reshape(-1, *l_a.shape[-2:]), l_v.reshape(-1, *l_v.shape[-2:])
    nce = jnp.mean(jax.vmap(lambda x, y: info_nce(x, y, tau))(a, b))
    return alpha * nce + beta * jnp.mean((l_a - l_v) ** 2)


# ---------------------------------------------------------------------------- CLUB (3.2)

# q: l (..., Dl) -> (mu, logvar) each (..., De), e.g. a `models.club.CLUB`.
Conditional = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def club_upper_bound(q: Conditional, l: jax.Array, e: jax.Array) -> jax.Array:
    """CLUB estimate of I(l; e): mean_i log q(e_i|l_i) - mean_{i,j} log q(e_j|l_i).

    Pairs are all leading positions of l (..., Dl) and e (..., De). The log-variance terms
    cancel between the two means, as in the reference. The mean over j of (e_j - mu_i)^2 is
    Var(e) + (mean(e) - mu_i)^2, so memory stays O(N D) instead of O(N^2 D).
    Gradients: to l and e (the V-AID step); keep q frozen there (see `models.vaid`).
    """
    mu, logvar = q(l)
    mu, e = mu.reshape(-1, mu.shape[-1]), e.reshape(-1, e.shape[-1])
    inv_var = jnp.exp(-logvar.reshape(mu.shape))
    positive = -0.5 * (mu - e) ** 2 * inv_var
    e_mean, e_var = jnp.mean(e, axis=0), jnp.var(e, axis=0)
    negative = -0.5 * (e_var + (e_mean - mu) ** 2) * inv_var
    return jnp.mean(jnp.sum(positive - negative, axis=-1))


def club_q_loss(q: Conditional, l: jax.Array, e: jax.Array) -> jax.Array:
    """q's update: mean negative Gaussian log-likelihood -log q(e_i | l_i) (nats, per pair).

    l and e are stopped: only q's parameters receive gradients.
    """
    l, e = jax.lax.stop_gradient(l), jax.lax.stop_gradient(e)
    mu, logvar = q(l)
    nll = 0.5 * ((e - mu) ** 2 * jnp.exp(-logvar) + logvar + jnp.log(2 * jnp.pi))
    return jnp.mean(jnp.sum(nll.reshape(-1, nll.shape[-1]), axis=-1))


# ---------------------------------------------------------------------------- Di-CTE (eq. 7)


def dicte_denoise(
    model: Denoiser,
    x0: jax.Array,
    cond: DiCTECond,
    key: jax.Array,
    *,
    prefix_frames: int = 20,
    prefix_ratio: float = 0.8,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One training denoising pass over x0 (B, F, E) in e_v's units: -> (predicted x0, the
    target x0, loss weights (B, F)), both x0 in the model's space (standardised for a Di-CTE
    with `standardise`, else x0 itself).

    t ~ U(0, 1) per sample. With probability `prefix_ratio` a sample's first
    `prefix_frames` frames are given clean (the ground-truth prefix) and get weight 0.
    """
    b, f, _ = x0.shape
    x0 = edges(model)[0](x0)
    k_t, k_eps, k_p = jax.random.split(key, 3)
    t = jax.random.uniform(k_t, (b,))
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    has_prefix = jax.random.bernoulli(k_p, prefix_ratio, (b,))
    clean = has_prefix[:, None] & (jnp.arange(f)[None] < prefix_frames)
    x_t = jnp.where(clean[..., None], x0, add_noise(x0, eps, t))
    return model(x_t, t, cond, clean), x0, (~clean).astype(x0.dtype)


def weighted_mse(pred: jax.Array, target: jax.Array, weights: jax.Array) -> jax.Array:
    """Mean of (pred - target)^2 over the weighted frames: pred, target (B, F, E), weights (B, F)."""
    err = jnp.mean((pred - target) ** 2, axis=-1)
    return jnp.sum(err * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def dicte_loss(
    model: Denoiser,
    x0: jax.Array,
    cond: DiCTECond,
    key: jax.Array,
    *,
    prefix_frames: int = 20,
    prefix_ratio: float = 0.8,
) -> jax.Array:
    """L_exp (eq. 7): ||e_v - S(e_t, t, x_ref, A_w, e_cond)||^2 over the non-prefix frames (in
    the model's space: standardised e_v for a Di-CTE with `standardise`)."""
    pred, target, w = dicte_denoise(model, x0, cond, key, prefix_frames=prefix_frames, prefix_ratio=prefix_ratio)
    return weighted_mse(pred, target, w)


# ---------------------------------------------------------------------------- V-AID stage 1 (eq. 8)

def vaid_loss(vaid: VAID, batch: VAIDBatch, key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Main stage-1 objective (eq. 8); e_cond is the first ground-truth frame (3.2). L_exp and
    CLUB see e in Di-CTE's space (standardised with `dicte.standardise`)."""
    v = vaid.variant
    l_a = vaid.lip(batch.windows)
    cond = DiCTECond(batch.windows, batch.x_ref, batch.e_v[:, 0])
    e_a, target, weights = dicte_denoise(
        vaid.dicte, batch.e_v, cond, key, prefix_frames=v.dicte.prefix_frames, prefix_ratio=v.dicte.prefix_ratio
    )
    l_lip = lip_loss(l_a, batch.l_v, alpha=v.loss.lip_alpha, beta=v.loss.lip_beta, tau=v.loss.tau)
    l_exp = weighted_mse(e_a, target, weights)
    club = club_upper_bound(frozen(vaid.club), l_a, e_a)
    total = l_lip + l_exp + v.loss.club_weight * club
    return total, dict(lip=l_lip, exp=l_exp, club=club, l_a=l_a, e_a=e_a)


def club_loss(vaid: VAID, l_a: jax.Array, e_a: jax.Array) -> jax.Array:
    """q's stage-1 update: NLL of (l_a, e_a) from the main step (inputs stopped)."""
    return club_q_loss(vaid.club, l_a, e_a)


# ---------------------------------------------------------------------------- encoder pretraining (6.1)

def sample_dropout_configs(key: jax.Array, batch: int, probs=(1 / 3, 1 / 3, 1 / 3)) -> jax.Array:
    """(B,) int32 dropout configuration per sample: DROP_LIP, DROP_EXPRESSION or USE_BOTH."""
    return jax.random.choice(key, 3, (batch,), p=jnp.asarray(probs)).astype(jnp.int32)


def emotion_label_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of (B, K) logits against (B,) int labels over the labelled rows
    (label >= 0); 0 when no row has a label."""
    known = labels >= 0
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.maximum(labels, 0)[:, None], axis=-1)[:, 0]
    return jnp.sum(jnp.where(known, nll, 0.0)) / jnp.maximum(jnp.sum(known), 1)


OPENING_SCALE = 0.1  # typical landmark mouth opening; the target is divided by it


def landmark_mouth_opening(landmarks: jax.Array) -> jax.Array:
    """(..., 68, 2) landmarks -> (...,) inner-lip gap (62 to 66) over the eye-corner distance
    (36 to 45): 0 closed, about 0.27 at the synthetic domain's widest."""
    gap = jnp.linalg.norm(landmarks[..., 66, :] - landmarks[..., 62, :], axis=-1)
    eyes = jnp.linalg.norm(landmarks[..., 45, :] - landmarks[..., 36, :], axis=-1)
    return gap / jnp.maximum(eyes, 1e-6)


def lip_opening_loss(pred: jax.Array, landmarks: jax.Array) -> jax.Array:
    """MSE of (B,) predictions against the landmark mouth opening / OPENING_SCALE."""
    return jnp.mean((pred - landmark_mouth_opening(landmarks) / OPENING_SCALE) ** 2)


def reconstruction_weights(configs: jax.Array, lip_mask: jax.Array, face_mask: jax.Array) -> jax.Array:
    """(B, H, W, 1) loss weights for configs (B,) and binary masks (B, H, W, 1).

    Drop lip (expression latent only): the face without the lip box, (1 - M_lip) * M_face.
    Drop expression (lip latent only): the lip box M_lip. Both: the whole image.
    The supplementary's sentence pairs "dropping the expression latent" with the face mask;
    we read that as a swap, since the region a dropped latent controls cannot be learned.
    """
    c = configs[:, None, None, None]
    expression_region = (1.0 - lip_mask) * face_mask
    return jnp.where(c == DROP_LIP, expression_region,
                     jnp.where(c == DROP_EXPRESSION, lip_mask, jnp.ones_like(lip_mask)))


def masked_reconstruction_loss(
    pred: jax.Array, target: jax.Array, configs: jax.Array, lip_mask: jax.Array, face_mask: jax.Array
) -> jax.Array:
    """Self-driven dropout reconstruction loss: masked MSE over (B, H, W, C) images.

    Each sample's squared error is averaged over its weighted pixels (mask applied to both
    prediction and ground truth), then over the batch.
    """
    w = reconstruction_weights(configs, lip_mask, face_mask).astype(pred.dtype)
    err = jnp.sum(w * (pred - target) ** 2, axis=(1, 2, 3))
    area = jnp.sum(w, axis=(1, 2, 3)) * pred.shape[-1]
    return jnp.mean(err / jnp.maximum(area, 1.0))
