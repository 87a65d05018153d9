"""Stage `audio` (not in the paper, which starts from a pretrained wav2vec2): the audio encoder
learns to hear lips, a `LipHead` on its A_w windows trained with the lip loss against the
frozen stage-0 encoders' l_v (the demo's stand-in for a pretrained encoder; runs between
stages 0 and 1).

Shape legend: B batch, F frames, c context frames each side.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.train import gates
from emotivetalk_jax.train.stages.common import (Frozen, Stage, abstract_model, audio_frames, audio_windows,
                                                 initialised, split_frozen, split_model, to_float_image)
from emotivetalk_jax.train.stages.frozen import audio_encoder, face_encoders

# Stage `audio` trains on 48-frame (1.92 s) crops: every synthetic utterance is at least 2 s long.
AUDIO_STAGE_FRAMES = 48


def build(cfg, *, seed: int, abstract: bool = False) -> Stage:
    from emotivetalk_jax.losses import lip_loss
    from emotivetalk_jax.models.audio_lip import AudioLipModel, LipHead
    from emotivetalk_jax.models.vaid_variants import get_vaid_variant

    v = get_vaid_variant(cfg.variant)
    frames = int(cfg.frames or AUDIO_STAGE_FRAMES)
    ctx = v.perceiver.window_half_width
    size = int(cfg.image_size or v.face.image_size)
    encoder = audio_encoder(cfg, seed + 1, abstract=abstract)
    width = int(encoder.config["hidden_size"])
    head = initialised(abstract_model(lambda: LipHead(2 * ctx + 1, width, v.face.lip_dim, rngs=nnx.Rngs(0))),
                       seed, abstract)
    model = AudioLipModel(encoder, head)
    groups = {"main": nnx.Param}
    graphdef, params, rest = split_model(model, groups, "audio", cfg)
    fgraph, fstate = split_frozen(Frozen(face=face_encoders(cfg, v, seed + 2, abstract=abstract)))
    lw = v.loss

    def prepare(frozen, batch, key):
        return dict(l_v=frozen.face.encode_lip(to_float_image(batch["frames"]), batch.get("landmarks")), wave=batch["audio"])

    def loss(model, inp, key, aux):
        feats = audio_frames(model.encoder, inp["wave"], frames + 2 * ctx)
        pred = model.head(audio_windows(feats, frames, ctx)).astype(jnp.float32)
        return lip_loss(pred, inp["l_v"], alpha=lw.lip_alpha, beta=lw.lip_beta, tau=lw.tau), {}

    def gate(model, frozen):
        fit, ev = gates.stage_clips(cfg, size)
        return gates.audio_window_gate(gates.inference_windows(model.encoder, fit, ctx),
                                        gates.inference_windows(model.encoder, ev, ctx), fit, ev)

    return Stage(name="audio", graphdef=graphdef, groups=tuple(groups), init_params=params, init_rest=rest,
                 frozen_graphdef=fgraph, frozen_state=fstate, losses={"main": loss}, prepare=prepare,
                 data=dict(frames=frames, size=size, mask_sizes=(), audio_context=ctx), model_name="AudioLipModel",
                 gate=gate)
