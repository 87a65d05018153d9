"""Stage `encoders` (0, 6.1): `EncoderPretrainer` reconstructs a driving frame from the
reference frame and its (dropped-out) lip / expression latents; masked MSE by dropout
configuration (`losses.masked_reconstruction_loss`), plus, when the variant weights them, a
cross-entropy on the clip's emotion label (`LossConfig.emotion_label_weight`) and an MSE
of the mouth opening read from the driving frame's landmarks (`LossConfig.lip_opening_weight`).

With `face_aligned` (`FaceEncoderConfig.aligned`, issue 30) the encoders read the driving frame
with its landmarks (they align it themselves, as at inference), and the renderer works in the
aligned frame: the reference, its masks and the target driving frame are aligned too
(`data.align.align_faces`), so that no head pose is left for the latents to carry.

Shape legend: B batch, S image size.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.train import gates
from emotivetalk_jax.train.stages.common import (Frozen, Stage, abstract_model, initialised, split_frozen,
                                                 split_model, to_float_image)
from emotivetalk_jax.train.stages.frozen import face_config


def build(cfg, *, seed: int, abstract: bool = False) -> Stage:
    from emotivetalk_jax.data.align import align_faces
    from emotivetalk_jax.data.synthetic_speech import EMOTIONS
    from emotivetalk_jax.losses import (emotion_label_loss, lip_opening_loss, masked_reconstruction_loss,
                                        sample_dropout_configs)
    from emotivetalk_jax.models.face_encoders import EncoderPretrainer, stage0_trainable
    from emotivetalk_jax.models.vaid_variants import get_vaid_variant

    v = get_vaid_variant(cfg.variant)
    v = v.override(v.name, face={"aligned": face_config(cfg, v).aligned})
    aligned = v.face.aligned
    size = int(cfg.image_size or v.face.image_size)
    label_weight, opening_weight = float(v.loss.emotion_label_weight), float(v.loss.lip_opening_weight)
    emotions = len(EMOTIONS) if label_weight > 0 else 0
    model = initialised(abstract_model(lambda: EncoderPretrainer(v.face, v.decoder, emotions=emotions,
                                                                 opening_head=opening_weight > 0,
                                                                 rngs=nnx.Rngs(0))), seed, abstract)
    groups = {"main": stage0_trainable(v.face)}
    graphdef, params, rest = split_model(model, groups, "encoders", cfg)
    fgraph, fstate = split_frozen(Frozen())

    def prepare(frozen, batch, key):
        inp = dict(x_ref=to_float_image(batch["reference"]), x_drv=to_float_image(batch["frames"][:, 0]),
                   configs=sample_dropout_configs(key, batch["reference"].shape[0], v.loss.dropout_probs),
                   lip_mask=batch[f"mask_lip_{size}"], face_mask=batch[f"mask_face_{size}"],
                   emotion=batch.get("emotion", jnp.full(batch["reference"].shape[:1], -1, jnp.int32)))
        inp["target"] = inp["x_drv"]
        if opening_weight > 0 or aligned:
            inp["landmarks"] = batch["landmarks"][:, 0].astype(jnp.float32)
        if aligned:
            ref_lm = batch["reference_landmarks"].astype(jnp.float32)
            inp["x_ref"] = align_faces(inp["x_ref"], ref_lm)
            inp["lip_mask"], inp["face_mask"] = (align_faces(inp[k].astype(jnp.float32), ref_lm)
                                                 for k in ("lip_mask", "face_mask"))
            inp["target"] = align_faces(inp["x_drv"], inp["landmarks"])
        return inp

    def loss(model, inp, key, aux):
        pred, logits, opening = model.reconstruct(inp["x_ref"], inp["x_drv"], inp["configs"],
                                                  inp["landmarks"] if aligned else None)
        rec = masked_reconstruction_loss(pred.astype(jnp.float32), inp["target"], inp["configs"],
                                         inp["lip_mask"], inp["face_mask"])
        total, parts = rec, {}
        if logits is not None:
            parts["emotion_ce"] = emotion_label_loss(logits.astype(jnp.float32), inp["emotion"])
            total = total + label_weight * parts["emotion_ce"]
        if opening is not None:
            parts["opening_mse"] = lip_opening_loss(opening.astype(jnp.float32), inp["landmarks"])
            total = total + opening_weight * parts["opening_mse"]
        return total, (dict(reconstruction=rec, **parts) if parts else {})

    def gate(model, frozen):
        return gates.face_gates(model.encoders, *gates.stage_clips(cfg, size))

    return Stage(name="encoders", graphdef=graphdef, groups=tuple(groups), init_params=params, init_rest=rest,
                 frozen_graphdef=fgraph, frozen_state=fstate, losses={"main": loss}, prepare=prepare,
                 data=dict(frames=1, size=size, mask_sizes=(size,), audio_context=0), model_name="EncoderPretrainer",
                 gate=gate)
