"""V-AID: audio-to-lip projector + Di-CTE + CLUB (3.2), its stage-1 losses and filters.

Shape legend: B batch, F frames, W audio window length, Da audio feature width,
Dl lip latent width, E expression latent width, H, W_img portrait size.

Inputs are audio windows A_w (B, F, W, Da) of the frozen wav2vec2 features
(`data.audio.frame_windows`) and the portrait x_ref (B, H, W_img, 3); outputs l_a (B, F, Dl)
and e_a (B, F, E). Stage 1 alternates two updates per batch:
- main (`vaid_loss`, params `STAGE1_MAIN`: projector + Di-CTE):
  L_lip(l_a, l_v) + L_exp + club_weight * CLUB(l_a, e_a) with q frozen (eq. 8); e_a is
  Di-CTE's x0 prediction of that training pass;
- q (`club_loss`, params `STAGE1_CLUB`): q's NLL on the same (l_a, e_a), both stopped.
The audio encoder and the face encoders are frozen and live outside this module.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
from flax import nnx

from emotivetalk_jax.convert.engine import abstract_model, count_params
from emotivetalk_jax.losses import club_q_loss, club_upper_bound, dicte_denoise, lip_loss, weighted_mse
from emotivetalk_jax.models.club import CLUB
from emotivetalk_jax.models.dicte import DiCTE, DiCTECond, generate_expression
from emotivetalk_jax.models.face_encoders import EncoderPretrainer
from emotivetalk_jax.models.perceiver import AudioLipProjector
from emotivetalk_jax.models.vaid_variants import VAIDVariant, get_vaid_variant

STAGE1_MAIN = nnx.All(nnx.Param, nnx.Any(nnx.PathContains("projector"), nnx.PathContains("dicte")))
STAGE1_CLUB = nnx.All(nnx.Param, nnx.PathContains("club"))


class VAID(nnx.Module):
    def __init__(self, variant: VAIDVariant, *, rngs: nnx.Rngs):
        self.variant = variant
        self.projector = AudioLipProjector(variant.perceiver, rngs=rngs)
        self.dicte = DiCTE(variant.dicte, rngs=rngs)
        self.club = CLUB(variant.club, rngs=rngs)

    @classmethod
    def from_config(cls, variant: VAIDVariant, *, rngs: nnx.Rngs) -> "VAID":
        return cls(variant, rngs=rngs)

    def lip(self, windows: jax.Array) -> jax.Array:
        """A_w (B, F, W, Da) -> l_a (B, F, Dl)."""
        return self.projector(windows)

    def expression(
        self, windows: jax.Array, x_ref: jax.Array, e_cond: jax.Array, key: jax.Array, steps: int | None = None
    ) -> jax.Array:
        """Any-length e_a (B, F, E) by DDIM, chunks of `train_frames` with a clean prefix."""
        cfg = self.variant.dicte
        return generate_expression(
            self.dicte, DiCTECond(windows, x_ref, e_cond), key,
            steps=steps or cfg.sample_steps, chunk=cfg.train_frames, prefix_frames=cfg.prefix_frames,
        )

    def __call__(
        self, windows: jax.Array, x_ref: jax.Array, e_cond: jax.Array, key: jax.Array, steps: int | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """(A_w, x_ref, e_cond (B, E)) -> (l_a, e_a)."""
        return self.lip(windows), self.expression(windows, x_ref, e_cond, key, steps)


class VAIDBatch(NamedTuple):
    windows: jax.Array  # (B, F, W, Da) audio windows of the frozen audio encoder
    x_ref: jax.Array  # (B, H, W_img, 3)
    l_v: jax.Array  # (B, F, Dl) lip latents of the frozen lip encoder
    e_v: jax.Array  # (B, F, E) expression latents of the frozen expression encoder


def frozen(module: nnx.Module) -> nnx.Module:
    """A copy of `module` whose parameters pass no gradient."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.lax.stop_gradient(state))


def vaid_loss(vaid: VAID, batch: VAIDBatch, key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Main stage-1 objective (eq. 8); e_cond is the first ground-truth frame (3.2)."""
    v = vaid.variant
    l_a = vaid.lip(batch.windows)
    cond = DiCTECond(batch.windows, batch.x_ref, batch.e_v[:, 0])
    e_a, weights = dicte_denoise(
        vaid.dicte, batch.e_v, cond, key, prefix_frames=v.dicte.prefix_frames, prefix_ratio=v.dicte.prefix_ratio
    )
    l_lip = lip_loss(l_a, batch.l_v, alpha=v.loss.lip_alpha, beta=v.loss.lip_beta, tau=v.loss.tau)
    l_exp = weighted_mse(e_a, batch.e_v, weights)
    club = club_upper_bound(frozen(vaid.club), l_a, e_a)
    total = l_lip + l_exp + v.loss.club_weight * club
    return total, dict(lip=l_lip, exp=l_exp, club=club, l_a=l_a, e_a=e_a)


def club_loss(vaid: VAID, l_a: jax.Array, e_a: jax.Array) -> jax.Array:
    """q's stage-1 update: NLL of (l_a, e_a) from the main step (inputs stopped)."""
    return club_q_loss(vaid.club, l_a, e_a)


def vaid_param_counts(variant_name: str) -> dict[str, int]:
    """Parameter counts per module of a variant, from abstract models (nothing allocated)."""
    v = get_vaid_variant(variant_name)
    vaid = abstract_model(lambda: VAID(v, rngs=nnx.Rngs(0)))
    pre = abstract_model(lambda: EncoderPretrainer(v.face, v.decoder, rngs=nnx.Rngs(0)))
    counts = {
        "audio_lip_projector": count_params(vaid.projector),
        "dicte": count_params(vaid.dicte),
        "club": count_params(vaid.club),
        "vaid": count_params(vaid),
        "face_encoders": count_params(pre.encoders),
        "reconstruction_decoder": count_params(pre.decoder),
    }
    return counts


__all__ = [
    "VAID", "VAIDBatch", "STAGE1_MAIN", "STAGE1_CLUB", "frozen", "vaid_loss", "club_loss", "vaid_param_counts",
]
