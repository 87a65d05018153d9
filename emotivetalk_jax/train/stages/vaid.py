"""Stage `vaid` (1, eq. 8): V-AID's projector + Di-CTE against the frozen face encoders'
l_v / e_v with CLUB, then CLUB's q on the same (l_a, e_a): two update groups, two
optimisers, one jitted step.

Shape legend: B batch, F frames, c context frames each side.
"""

from __future__ import annotations

from flax import nnx

from emotivetalk_jax.train import gates
from emotivetalk_jax.train.stages.common import (Frozen, Stage, abstract_model, batch_windows, initialised,
                                                 split_frozen, split_model, to_float_image)
from emotivetalk_jax.train.stages.frozen import audio_encoder, face_encoders


def build(cfg, *, seed: int, abstract: bool = False) -> Stage:
    from emotivetalk_jax.losses import club_loss, vaid_loss
    from emotivetalk_jax.models.vaid import STAGE1_CLUB, STAGE1_MAIN, VAID, VAIDBatch
    from emotivetalk_jax.models.vaid_variants import get_vaid_variant

    v = get_vaid_variant(cfg.variant)
    frames = int(cfg.frames or v.dicte.train_frames)
    ctx = v.perceiver.window_half_width
    size = int(cfg.image_size or v.face.image_size)
    model = initialised(abstract_model(lambda: VAID(v, rngs=nnx.Rngs(0))), seed, abstract)
    groups = {"main": STAGE1_MAIN, "club": STAGE1_CLUB}
    graphdef, params, rest = split_model(model, groups, "vaid", cfg)
    encoder = audio_encoder(cfg, seed + 1, abstract=abstract)
    fgraph, fstate = split_frozen(Frozen(face=face_encoders(cfg, v, seed + 2, abstract=abstract)))

    def prepare(frozen, batch, key):
        frames_f = to_float_image(batch["frames"])
        l_v, e_v = frozen.face(frames_f)
        return dict(vb=VAIDBatch(batch_windows(batch, frames, ctx), to_float_image(batch["reference"]), l_v, e_v))

    def main(model, inp, key, aux):
        total, a = vaid_loss(model, inp["vb"], key)
        return total, dict(lip=a["lip"], exp=a["exp"], club=a["club"], l_a=a["l_a"], e_a=a["e_a"])

    def club(model, inp, key, aux):
        return club_loss(model, aux["l_a"], aux["e_a"]), {}

    def gate(model, frozen):
        fit, ev = gates.stage_clips(cfg, size)
        return gates.lip_audio_gates(model, encoder, fit, ev, frames=frames)

    return Stage(name="vaid", graphdef=graphdef, groups=tuple(groups), init_params=params, init_rest=rest,
                 frozen_graphdef=fgraph, frozen_state=fstate, losses={"main": main, "club": club}, prepare=prepare,
                 data=dict(frames=frames, size=size, mask_sizes=(), audio_context=ctx), model_name="VAID",
                 audio_encoder=encoder, gate=gate)
