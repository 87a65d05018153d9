"""Stage `encoders` (0, 6.1): `EncoderPretrainer` reconstructs a driving frame from the
reference frame and its (dropped-out) lip / expression latents; masked MSE by dropout
configuration (`losses.masked_reconstruction_loss`), plus a cross-entropy on the clip's
emotion label when the variant weights it (`LossConfig.emotion_label_weight`).

Shape legend: B batch, S image size.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.train import gates
from emotivetalk_jax.train.stages.common import (Frozen, Stage, abstract_model, initialised, split_frozen,
                                                 split_model, to_float_image)


def build(cfg, *, seed: int, abstract: bool = False) -> Stage:
    from emotivetalk_jax.data.synthetic_speech import EMOTIONS
    from emotivetalk_jax.losses import emotion_label_loss, masked_reconstruction_loss, sample_dropout_configs
    from emotivetalk_jax.models.face_encoders import EncoderPretrainer, stage0_trainable
    from emotivetalk_jax.models.vaid_variants import get_vaid_variant

    v = get_vaid_variant(cfg.variant)
    size = int(cfg.image_size or v.face.image_size)
    label_weight = float(v.loss.emotion_label_weight)
    emotions = len(EMOTIONS) if label_weight > 0 else 0
    model = initialised(abstract_model(lambda: EncoderPretrainer(v.face, v.decoder, emotions=emotions,
                                                                 rngs=nnx.Rngs(0))), seed, abstract)
    groups = {"main": stage0_trainable(v.face)}
    graphdef, params, rest = split_model(model, groups, "encoders", cfg)
    fgraph, fstate = split_frozen(Frozen())

    def prepare(frozen, batch, key):
        return dict(x_ref=to_float_image(batch["reference"]), x_drv=to_float_image(batch["frames"][:, 0]),
                    configs=sample_dropout_configs(key, batch["reference"].shape[0], v.loss.dropout_probs),
                    lip_mask=batch[f"mask_lip_{size}"], face_mask=batch[f"mask_face_{size}"],
                    emotion=batch.get("emotion", jnp.full(batch["reference"].shape[:1], -1, jnp.int32)))

    def loss(model, inp, key, aux):
        pred, logits = model.reconstruct(inp["x_ref"], inp["x_drv"], inp["configs"])
        rec = masked_reconstruction_loss(pred.astype(jnp.float32), inp["x_drv"], inp["configs"],
                                         inp["lip_mask"], inp["face_mask"])
        if logits is None:
            return rec, {}
        emo = emotion_label_loss(logits.astype(jnp.float32), inp["emotion"])
        return rec + label_weight * emo, dict(reconstruction=rec, emotion_ce=emo)

    def gate(model, frozen):
        return gates.face_gates(model.encoders, *gates.stage_clips(cfg, size))

    return Stage(name="encoders", graphdef=graphdef, groups=tuple(groups), init_params=params, init_rest=rest,
                 frozen_graphdef=fgraph, frozen_state=fstate, losses={"main": loss}, prepare=prepare,
                 data=dict(frames=1, size=size, mask_sizes=(size,), audio_context=0), model_name="EncoderPretrainer",
                 gate=gate)
