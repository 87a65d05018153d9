"""Stage `student` (not in the paper): a few-step ETHD distilled from a trained one by
consistency distillation, its guidance folded in (`diffusion.consistency`).

The teacher (`init.teacher`: a stage-2 workdir or a native ethd folder, e.g. a bundle's
`ethd/`) is frozen beside V-AID, the face encoders, the audio encoder and the VAE; the student
starts from it (or from `init.ethd`) and trains whole; the consistency target is the student's
EMA (`ema_decay`, LCM's 0.95 by default in `configs/train.py`), what `export-bundle` ships.
Everything else is stage 2's (`ethd.build`): the batch, `prepare` (VAE latents, e_v, l_a, e_a
from Di-CTE, masks), the frozen-output cache, the mesh rules, remat and the optimiser.

Guidance folded in at fixed scales (`teacher_lip_scale`, `teacher_expr_scale`; -1: the scales of
the bundle the teacher folder belongs to), not as a conditioning input (LCM's w-embedding): a
bundle samples at one guidance setting, and fixed scales keep the student exactly ETHD's
architecture, so it loads, converts and exports like any backbone.

Gates at every checkpoint (8 held-out clips, 4 windows each, their neutral portraits as the
reference, e_dri from Di-CTE): the student sampled from pure noise in 1, 2 and 4 steps
(`gate/student{s}_lip_corr`, `_emotion_acc`, `_psnr`), beside the teacher sampled by guided
DDIM at `teacher_steps` (`gate/teacher{T}_...`, computed once per run).

Shape legend: B batch, F frames, H, W latent size, S image size.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from emotivetalk_jax.train import gates
from emotivetalk_jax.train.stages import ethd
from emotivetalk_jax.train.stages.common import Frozen, Stage, split_frozen

log = logging.getLogger(__name__)

GATE_STEPS = (1, 2, 4)


def teacher_scales(cfg) -> tuple[float, float]:
    """(lip, expr) guidance scales the student folds in: the config's, or (-1) those of the
    bundle whose `ethd/` folder `init.teacher` is."""
    lip, expr = float(cfg.get("teacher_lip_scale", -1.0)), float(cfg.get("teacher_expr_scale", -1.0))
    if lip >= 0 and expr >= 0:
        if lip < 1 or expr < 1:
            raise ValueError(f"teacher guidance scales must be >= 1 (1: no guidance), got lip {lip}, expr {expr}")
        return lip, expr
    meta = Path(str(cfg.init.teacher)).parent / "config.json"
    try:
        settings = json.loads(meta.read_text())
        scales = float(settings["lip_scale"]), float(settings["expr_scale"])
    except (OSError, ValueError, KeyError):
        raise ValueError(f"init.teacher={cfg.init.teacher!r} is not the ethd/ folder of a bundle, so its guidance "
                         "scales are unknown: set teacher_lip_scale and teacher_expr_scale (1: no guidance)") from None
    return (lip if lip >= 0 else scales[0]), (expr if expr >= 0 else scales[1])


def build(cfg, *, seed: int, abstract: bool = False) -> Stage:
    from emotivetalk_jax.diffusion.consistency import distillation_grid, distillation_loss
    from emotivetalk_jax.diffusion.ethd_loss import region_weight, stage2_trainable
    from emotivetalk_jax.models.ethd_variants import get_ethd_variant
    from emotivetalk_jax.train.stages.frozen import load_init

    teacher_path = str(cfg.init.get("teacher", "") or "")
    if not teacher_path and not abstract:
        raise ValueError("stage student distils a trained backbone: set init.teacher (a stage-2 workdir or a "
                         "bundle's ethd/ folder, e.g. emotivetalk_jax/assets/demo/ethd)")
    if cfg.get("expression_loss_weight", 0.0) or cfg.init.get("expression_reader"):
        raise ValueError("stage student has no expression term: leave expression_loss_weight 0 and "
                         "init.expression_reader empty (the teacher already draws the expression)")
    explicit = min(float(cfg.get("teacher_lip_scale", -1.0)), float(cfg.get("teacher_expr_scale", -1.0))) >= 0
    lip_scale, expr_scale = teacher_scales(cfg) if teacher_path or explicit else (1.0, 1.0)
    grid = distillation_grid(int(cfg.get("student_grid", 32)))
    huber = float(cfg.get("consistency_huber", 0.0))
    anchor = float(cfg.get("consistency_anchor", 0.0))
    teacher_steps = int(cfg.get("teacher_steps", 8))
    if huber < 0 or anchor < 0 or teacher_steps < 1:
        raise ValueError(f"consistency_huber and consistency_anchor must be >= 0 and teacher_steps >= 1, got "
                         f"{huber}, {anchor}, {teacher_steps}")

    base_cfg = cfg.copy_and_resolve_references()
    with base_cfg.unlocked():
        base_cfg.stage = "ethd"
        base_cfg.init.ethd = cfg.init.get("ethd") or teacher_path  # the student starts from the teacher
    base = ethd.build(base_cfg, seed=seed, abstract=abstract)
    ev = get_ethd_variant(cfg.variant)
    tr = ev.train
    teacher = ethd.ethd_model(base_cfg, ev, seed, abstract=True)
    if not abstract:
        teacher = load_init(teacher_path, teacher, "ethd")
    f = nnx.merge(base.frozen_graphdef, base.frozen_state)
    frozen = Frozen(audio=f.audio, face=f.face, vaid=f.vaid, vae=f.vae, reader=f.reader, teacher=teacher)
    fgraph, fstate = split_frozen(frozen)
    lip_weight = float(cfg.get("lip_loss_weight", 1.0))
    face_weight = float(cfg.get("face_loss_weight", 1.0))

    def loss(model, inp, key, aux, frozen, target):
        eb = inp["eb"]
        weight = region_weight(eb.lip_mask, eb.face_mask, lip_weight, face_weight)
        l, a = distillation_loss(model, target, frozen.teacher, eb, key, grid=grid, lip_scale=lip_scale,
                                 expr_scale=expr_scale, p_video=tr.p_video_expr, huber_c=huber, weight=weight,
                                 anchor=anchor)
        return l, dict(sigma=jnp.mean(a["sigma"]), loss_consistency=a["consistency"], loss_anchor=a["anchor"])

    frames, size = base.data["frames"], base.data["size"]
    ctx, latent = base.data["audio_context"], base.data["mask_sizes"][0]
    scaling = float(frozen.vae.config.get("scaling_factor", 0.18215))
    ic = ev.inference
    chunk = ic.decode_chunk if frames % ic.decode_chunk == 0 else frames

    def _decode(frozen, d):
        flat = (d / scaling).reshape(-1, chunk, *d.shape[2:])
        x = jax.vmap(lambda z: frozen.vae.decode(z, chunk))(flat)
        return x.reshape(-1, frames, *x.shape[2:])

    def _schedule(steps: int, who: str) -> np.ndarray:
        from emotivetalk_jax.diffusion.consistency import student_sigmas
        from emotivetalk_jax.diffusion.edm import karras_sigmas

        with jax.ensure_compile_time_eval():
            return np.asarray(karras_sigmas(steps)) if who == "teacher" else student_sigmas(steps, len(grid))

    @functools.partial(jax.jit, static_argnames=("steps", "who"))
    def _sampled(params, rest, frozen_state, batch, steps, who):
        """Decoded frames of the student's `steps`-step consistency sampling (who="student") or
        the teacher's guided DDIM (who="teacher") from pure noise, one window per row."""
        from emotivetalk_jax.diffusion.consistency import consistency_fn, guided_denoise
        from emotivetalk_jax.diffusion.ethd_loss import ethd_denoise

        frozen = nnx.merge(fgraph, frozen_state)
        eb = base.prepare(frozen, batch, jax.random.key(0))["eb"]
        key = jax.random.fold_in(jax.random.key(0), 2)
        sig = _schedule(steps, who)
        x = jax.random.normal(key, eb.latents.shape) * float(np.sqrt(sig[0] ** 2 + 1.0))
        model = nnx.merge(base.graphdef, *(params[g] for g in base.groups), rest)
        for i in range(steps):
            s = jnp.full(x.shape[:1], float(sig[i]))
            if who == "teacher":
                d = guided_denoise(frozen.teacher, x, s, eb, eb.e_a, lip_scale, expr_scale)
                x = d + float(sig[i + 1] / sig[i]) * (x - d)
            else:
                d = consistency_fn(x, ethd_denoise(model, x, s, eb.ref_latent, eb.lip_tokens, eb.added_time_ids,
                                                   eb.e_a, eb.e_ref, eb.lip_mask, eb.face_mask), s)
                z = jax.random.normal(jax.random.fold_in(key, 10 + i), x.shape)
                x = d + float(sig[i + 1]) * z
        return _decode(frozen, x)

    teacher_gates: dict[str, float] = {}

    def gate(model, frozen_model):
        _, clips = gates.stage_clips(cfg, size)
        _, *states = nnx.split(model, stage2_trainable(tr.train_backbone), ...)
        params = {g: st.to_pure_dict() for g, st in zip(base.groups, states[:-1])}
        rest = states[-1].to_pure_dict()
        kw = dict(frames=frames, context=ctx, latent=latent)
        out = {}
        for s in GATE_STEPS:
            g = gates.denoiser_gates(lambda b, s=s: _sampled(params, rest, fstate, b, s, "student"),
                                     base.audio_encoder, clips, **kw)
            out.update({f"gate/student{s}_{k[len('gate/x0_'):]}": v for k, v in g.items()})
        if not teacher_gates:
            g = gates.denoiser_gates(lambda b: _sampled(params, rest, fstate, b, teacher_steps, "teacher"),
                                     base.audio_encoder, clips, **kw)
            teacher_gates.update({f"gate/teacher{teacher_steps}_{k[len('gate/x0_'):]}": v for k, v in g.items()})
        return {**out, **teacher_gates}

    return Stage(name="student", graphdef=base.graphdef, groups=base.groups, init_params=base.init_params,
                 init_rest=base.init_rest, frozen_graphdef=fgraph, frozen_state=fstate, losses={"main": loss},
                 prepare=base.prepare, data=base.data, model_name="ETHD", audio_encoder=base.audio_encoder,
                 gate=gate, frozen_outputs=base.frozen_outputs, lr_scale=base.lr_scale, loss_reads_target=True)
