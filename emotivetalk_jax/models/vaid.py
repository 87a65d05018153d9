"""V-AID: audio-to-lip projector + Di-CTE + CLUB (3.2) and its stage-1 parameter filters.

Shape legend: B batch, F frames, W audio window length, Da audio feature width,
Dl lip latent width, E expression latent width, H, W_img portrait size.

Inputs are audio windows A_w (B, F, W, Da) of the frozen wav2vec2 features
(`data.audio.frame_windows`) and the portrait x_ref (B, H, W_img, 3); outputs l_a (B, F, Dl)
and e_a (B, F, E). Stage 1 alternates two updates per batch:
- main (`vaid_loss`, params `STAGE1_MAIN`: projector + Di-CTE):
  L_lip(l_a, l_v) + L_exp + club_weight * CLUB(l_a, e_a) with q frozen (eq. 8); e_a is
  Di-CTE's x0 prediction of that training pass;
- q (`club_loss`, params `STAGE1_CLUB`): q's NLL on the same (l_a, e_a), both stopped.
The audio encoder and the face encoders are frozen and live outside this module. The two
objectives are in `losses`, the sampling of e_a in `diffusion.long_dicte.vaid_expression`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
from flax import nnx

from emotivetalk_jax.models.club import CLUB
from emotivetalk_jax.models.dicte import DataStat, DiCTE
from emotivetalk_jax.models.face_encoders import EncoderPretrainer
from emotivetalk_jax.models.layers import frozen, param_count
from emotivetalk_jax.models.perceiver import AudioLipProjector
from emotivetalk_jax.models.vaid_variants import VAIDVariant, get_vaid_variant

STAGE1_MAIN = nnx.All(nnx.Param, nnx.Not(DataStat), nnx.Any(nnx.PathContains("projector"), nnx.PathContains("dicte")))
STAGE1_CLUB = nnx.All(nnx.Param, nnx.PathContains("club"))
# Di-CTE alone (stage 1 with `vaid_train=dicte`: the lip projector, and so l_a, stays fixed).
STAGE1_DICTE = nnx.All(nnx.Param, nnx.Not(DataStat), nnx.PathContains("dicte"))


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


class VAIDBatch(NamedTuple):
    windows: jax.Array  # (B, F, W, Da) audio windows of the frozen audio encoder
    x_ref: jax.Array  # (B, H, W_img, 3)
    l_v: jax.Array  # (B, F, Dl) lip latents of the frozen lip encoder
    e_v: jax.Array  # (B, F, E) expression latents of the frozen expression encoder


def vaid_param_counts(variant_name: str) -> dict[str, int]:
    """Parameter counts per module of a variant, from abstract models (nothing allocated)."""
    v = get_vaid_variant(variant_name)
    vaid = nnx.eval_shape(lambda: VAID(v, rngs=nnx.Rngs(0)))
    pre = nnx.eval_shape(lambda: EncoderPretrainer(v.face, v.decoder, rngs=nnx.Rngs(0)))
    counts = {
        "audio_lip_projector": param_count(vaid.projector),
        "dicte": param_count(vaid.dicte),
        "club": param_count(vaid.club),
        "vaid": param_count(vaid),
        "face_encoders": param_count(pre.encoders),
        "reconstruction_decoder": param_count(pre.decoder),
    }
    return counts


__all__ = [
    "VAID", "VAIDBatch", "STAGE1_MAIN", "STAGE1_CLUB", "STAGE1_DICTE", "frozen", "vaid_param_counts",
]
