"""Stage `reader` (not in the paper): `ExpressionReader` learns to read the synthetic domain's
expression parameters (brow_raise, brow_inner, eye_open, corner) from a frame, by mean squared
error against the renderer's own values. Stage 2's expression term then reads through it
(`init.expression_reader`), so the mouth corners, which the stage-0 expression encoder does not
see, are rewarded like the brows. Needs a labelled source (`data.source=synthetic`).

Gate (`gate/reader_r_<parameter>`, and `gate/reader_r_min`): Pearson r of the reading against
the truth on the held-out clips, per parameter.

Shape legend: B batch, F frames, S image size, P parameters.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from emotivetalk_jax.train import gates
from emotivetalk_jax.train.stages.common import (Frozen, Stage, abstract_model, initialised, split_frozen,
                                                 split_model, to_float_image)

READER_FRAMES = 4  # frames per training window (different expressions of one clip)


def reader_abstract(size: int) -> nnx.Module:
    from emotivetalk_jax.data.synthetic_face import EXPRESSION_KEYS
    from emotivetalk_jax.models.expression_reader import ExpressionReader

    return abstract_model(lambda: ExpressionReader(size, len(EXPRESSION_KEYS), rngs=nnx.Rngs(0)))


def reader_gate(read, clips) -> dict[str, float]:
    """Pearson r per parameter of `read` (frames (N, S, S, 3) uint8 -> (N, P)) against the truth
    over `clips` (`gates.ProbeClips`), and the smallest."""
    from emotivetalk_jax.data.synthetic_face import EXPRESSION_KEYS

    pred = np.concatenate([np.asarray(read(f)) for f in clips.frames])
    truth = np.concatenate([c.states[:, 2:6] for c in clips.clips])
    out = {f"gate/reader_r_{k}": float(np.corrcoef(pred[:, i], truth[:, i])[0, 1])
           for i, k in enumerate(EXPRESSION_KEYS)}
    out["gate/reader_r_min"] = min(out.values())
    return out


def build(cfg, *, seed: int, abstract: bool = False) -> Stage:
    from emotivetalk_jax.models.ethd_variants import get_ethd_variant

    if cfg.data.source != "synthetic":
        raise ValueError(f"stage reader learns the synthetic domain's expression parameters; data.source="
                         f"{cfg.data.source!r} has no such labels: set data.source=synthetic")
    ev = get_ethd_variant(cfg.variant)
    size = int(cfg.image_size or int(ev.svd.unet["sample_size"]) * ev.vae_factor)  # stage 2's default frames
    frames = int(cfg.frames or READER_FRAMES)
    model = initialised(reader_abstract(size), seed, abstract)
    groups = {"main": nnx.Param}
    graphdef, params, rest = split_model(model, groups, "reader", cfg)
    fgraph, fstate = split_frozen(Frozen())

    def prepare(frozen, batch, key):
        return dict(x=to_float_image(batch["frames"]), y=batch["expression"].astype(jnp.float32))

    def loss(model, inp, key, aux):
        err = jnp.square(model(inp["x"]) - inp["y"])  # (B, F, P)
        return jnp.mean(err), {f"mse_{i}": jnp.mean(err[..., i]) for i in range(err.shape[-1])}

    def gate(model, frozen):
        read = nnx.jit(lambda m, x: m(to_float_image(x)))
        return reader_gate(lambda f: read(model, f), gates.stage_clips(cfg, size)[1])

    return Stage(name="reader", graphdef=graphdef, groups=tuple(groups), init_params=params, init_rest=rest,
                 frozen_graphdef=fgraph, frozen_state=fstate, losses={"main": loss}, prepare=prepare,
                 data=dict(frames=frames, size=size, mask_sizes=(), audio_context=0, labels=("expression",)),
                 model_name="ExpressionReader", gate=gate)
