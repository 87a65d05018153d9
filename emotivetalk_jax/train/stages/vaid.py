"""Stage `vaid` (1, eq. 8): V-AID's projector + Di-CTE against the frozen face encoders'
l_v / e_v with CLUB, then CLUB's q on the same (l_a, e_a): two update groups, two
optimisers, one jitted step. With `vaid_train=dicte` the main group is Di-CTE alone, started
from the stage-1 workdir `init.vaid` (its lip projector, and l_a, unchanged).

Shape legend: B batch, F frames, c context frames each side.
"""

from __future__ import annotations

from flax import nnx

from emotivetalk_jax.train import gates
from emotivetalk_jax.train.stages.common import (Frozen, Stage, abstract_model, batch_windows, initialised,
                                                 split_frozen, split_model, to_float_image)
from emotivetalk_jax.train.stages.frozen import audio_encoder, face_encoders, load_init


def build(cfg, *, seed: int, abstract: bool = False) -> Stage:
    from emotivetalk_jax.losses import club_loss, vaid_loss
    from emotivetalk_jax.models.vaid import STAGE1_CLUB, STAGE1_DICTE, STAGE1_MAIN, VAID, VAIDBatch
    from emotivetalk_jax.models.vaid_variants import get_vaid_variant

    v = get_vaid_variant(cfg.variant)
    frames = int(cfg.frames or v.dicte.train_frames)
    ctx = v.perceiver.window_half_width
    size = int(cfg.image_size or v.face.image_size)
    part = cfg.get("vaid_train", "all")
    main = {"all": STAGE1_MAIN, "dicte": STAGE1_DICTE}.get(part)
    if main is None:
        raise ValueError(f"vaid_train={part!r}: choose all or dicte")
    model = abstract_model(lambda: VAID(v, rngs=nnx.Rngs(0)))
    if part == "dicte":
        if not cfg.init.get("vaid"):
            raise ValueError("vaid_train=dicte retrains the Di-CTE of a finished stage 1: set init.vaid to its workdir")
        model = model if abstract else load_init(cfg.init.vaid, model, "vaid")  # a workdir or a native folder
    else:
        model = initialised(model, seed, abstract)
    groups = {"main": main, "club": STAGE1_CLUB}
    graphdef, params, rest = split_model(model, groups, "vaid", cfg)
    encoder = audio_encoder(cfg, seed + 1, abstract=abstract)
    fgraph, fstate = split_frozen(Frozen(face=face_encoders(cfg, v, seed + 2, abstract=abstract)))

    def prepare(frozen, batch, key):
        frames_f = to_float_image(batch["frames"])
        l_v, e_v = frozen.face(frames_f, batch.get("landmarks"))
        return dict(vb=VAIDBatch(batch_windows(batch, frames, ctx), to_float_image(batch["reference"]), l_v, e_v))

    def main(model, inp, key, aux):
        total, a = vaid_loss(model, inp["vb"], key)
        return total, dict(lip=a["lip"], exp=a["exp"], club=a["club"], l_a=a["l_a"], e_a=a["e_a"])

    def club(model, inp, key, aux):
        return club_loss(model, aux["l_a"], aux["e_a"]), {}

    def calibrate(rest, frozen_state, batches):
        """Di-CTE's e_v statistics (`DiCTEConfig.standardise`): per-dimension mean and std of the
        frozen expression encoder's e_v over every frame of `batches`."""
        import jax
        import jax.numpy as jnp

        expr = jax.jit(lambda st, x, lm: nnx.merge(fgraph, st).face.encode_expression(x, lm))
        e = jnp.concatenate([expr(frozen_state, to_float_image(b["frames"]).reshape(-1, *b["frames"].shape[-3:]),
                                  None if "landmarks" not in b else b["landmarks"].reshape(-1, 68, 2))
                             for b in batches])
        mean, std = jnp.mean(e, axis=0), jnp.std(e, axis=0)
        return {**rest, "dicte": {**rest["dicte"], "stats": {"mean": mean, "scale": jnp.maximum(std, 1e-6)}}}

    def gate(model, frozen):
        fit, ev = gates.stage_clips(cfg, size)
        out = gates.lip_audio_gates(model, encoder, fit, ev, frames=frames)
        return {**out, **gates.expression_gate(model, frozen.face, encoder, fit, ev)}

    return Stage(name="vaid", graphdef=graphdef, groups=tuple(groups), init_params=params, init_rest=rest,
                 frozen_graphdef=fgraph, frozen_state=fstate, losses={"main": main, "club": club}, prepare=prepare,
                 data=dict(frames=frames, size=size, mask_sizes=(), audio_context=ctx), model_name="VAID",
                 audio_encoder=encoder, gate=gate,
                 # a Di-CTE retrain keeps the statistics its starting weights were trained under
                 calibrate=calibrate if v.dicte.standardise and part == "all" else None)
