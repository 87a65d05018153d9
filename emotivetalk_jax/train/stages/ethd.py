"""Stage `ethd` (2, eq. 11, 6.4): the ETHD backbone under EDM with V-AID, the face encoders,
the audio encoder and the VAE frozen; e_dri = e_v w.p. 0.6 else e_a.

With `cfg.frozen_cache` the frame-wise frozen outputs (VAE latents, e_v, l_a, and with
`init.expression_reader` the reader's r_v) are computed once
per training clip by `frozen_outputs` (the same `_frame_parts` the step runs) and the loader
cuts them into the batch (`data.frozen_cache`); `prepare` then reads them instead. The
reference latent (noise-augmented in pixel space), e_ref and e_a (Di-CTE sampled with the
step's key) stay computed every step.

Shape legend: B batch, F frames, S image size, c context frames each side.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from emotivetalk_jax.train import gates
from emotivetalk_jax.train.state import host_init
from emotivetalk_jax.train.stages.common import (Frozen, Stage, abstract_model, batch_windows, split_frozen,
                                                 split_model, to_float_image)
from emotivetalk_jax.train.stages.frozen import (audio_encoder, expression_reader, face_encoders, vaid_model,
                                                 vae_model)

log = logging.getLogger(__name__)

FROZEN_CHUNK = 8  # windows of F frames per call of the cache's encoder (one compile for every clip)


def _frame_parts(frozen, x: jax.Array, windows: jax.Array, scaling: float, landmarks: jax.Array | None = None) -> dict:
    """Frames x (B, F, S, S, 3) in [-1, 1], A_w (B, F, W, D) -> latents (B, F, h, w, L) (the VAE's
    mean x scaling), e_v (B, F, E), l_a (B, F, Dl), and with an expression reader its reading
    r_v (B, F, P): what depends on one frame and its window. `landmarks` (B, F, 68, 2): the
    frames', which aligned face encoders read."""
    b, f = x.shape[:2]
    mean, _ = frozen.vae.encode(x.reshape(-1, *x.shape[2:]))
    e_v = frozen.face.encode_expression(x, landmarks)
    out = dict(latents=(mean * scaling).reshape(b, f, *mean.shape[1:]), e_v=e_v, l_a=frozen.vaid.lip(windows))
    if frozen.reader is not None:
        out["r_v"] = frozen.reader(x)
    return out


def frozen_outputs(fgraph, fstate, modules: Frozen, encoder, *, frames: int, context: int, size: int,
                   scaling: float, compute_dtype):
    """`data.frozen_cache.FrozenOutputs` of stage 2: one clip's latents (N, h, w, L), e_v (N, E),
    with an expression reader r_v (N, P), and l_a (N + c, Dl), each row what `prepare` computes
    for that frame (in `compute_dtype`, as the step casts the frozen models). l_a has c rows past
    the clip's end: the per-step path's windows on padded frames, where `feature_window` clamps
    each row (row N - 1 + c onwards reads the last feature only, so the loader's clamp to the last
    row stays exact)."""
    from emotivetalk_jax.data.audio_cache import encoder_digest, feature_window
    from emotivetalk_jax.data.frozen_cache import FrozenOutputs, modules_digest
    from emotivetalk_jax.train.state import cast_floating

    dtype = jnp.dtype(compute_dtype)

    aligned = bool(getattr(modules.face.cfg, "aligned", False))

    @jax.jit
    def encode(frozen_state, x, feats, lm):  # (G, F, S, S, 3) uint8, (G, F + 2 c, D), (G, F, 68, 2) or None
        fz = nnx.merge(fgraph, cast_floating(frozen_state, dtype))
        return _frame_parts(fz, to_float_image(x), batch_windows(dict(frame_features=feats), frames, context),
                            scaling, lm)

    def compute(clip_frames, feats, landmarks=None):
        n = len(clip_frames)
        g = FROZEN_CHUNK * frames
        total = -(-(n + context) // g) * g  # rows N + c, padded to whole chunks
        rows_idx = np.minimum(np.arange(total), n - 1)
        x = clip_frames[rows_idx].reshape(-1, frames, *clip_frames.shape[1:])
        lm = None if landmarks is None else np.asarray(landmarks, np.float32)[rows_idx].reshape(-1, frames, 68, 2)
        rows = feature_window(np.asarray(feats, np.float32), 0, total, context)
        win = np.stack([rows[k * frames : (k + 1) * frames + 2 * context] for k in range(len(x))])
        parts = []
        for i in range(0, len(x), FROZEN_CHUNK):
            out = encode(fstate, x[i : i + FROZEN_CHUNK], win[i : i + FROZEN_CHUNK],
                         None if lm is None else lm[i : i + FROZEN_CHUNK])
            parts.append({k: np.asarray(a, np.float32).reshape(-1, *a.shape[2:]) for k, a in out.items()})
        return {k: np.concatenate([p[k] for p in parts])[:n + context if k == "l_a" else n] for k in parts[0]}

    face, vaid, vae, reader = modules.face, modules.vaid, modules.vae, modules.reader
    extra = (f"ethd:{encoder_digest(encoder)}:{scaling!r}:{size}:{context}:{dtype}:{sorted(vae.config.items())}:"
             f"{face.cfg!r}:{vaid.projector.cfg!r}" + (":reader" if reader is not None else ""))
    readers = (reader,) if reader is not None else ()
    return FrozenOutputs(digest=modules_digest(vae, face, vaid.projector, *readers, extra=extra), compute=compute,
                         size=size, landmarks=aligned)


def stage_ethd_config(cfg, variant):
    """The variant's `ETHDConfig` with the run's `pose_condition` (the pose guider) applied."""
    return dataclasses.replace(variant.ethd, pose=bool(cfg.get("pose_condition", False)))


def ethd_model(cfg, variant, seed: int, *, abstract: bool = False) -> nnx.Module:
    """The ETHD stage 2 starts from: `cfg.init.ethd` (a stage-2 workdir's latest weights or a
    native ethd folder, e.g. a bundle's `ethd/`: fine-tuning a trained backbone; one without a
    pose guider gets a fresh, zero-output one when `pose_condition` is on), else SVD's UNet of
    `cfg.init.svd` inherited (a random SVD UNet when unset); `abstract=True`: shapes only."""
    from emotivetalk_jax.convert.ethd import inherit_svd, load_ethd_from_svd
    from emotivetalk_jax.models import ethd as E
    from emotivetalk_jax.models.unet import UNetSpatioTemporal

    ecfg = stage_ethd_config(cfg, variant)
    if abstract:
        return abstract_model(lambda: E.ETHD.from_svd_config(dict(variant.svd.unet), ecfg, rngs=nnx.Rngs(0)))
    if cfg.init.get("ethd"):
        from emotivetalk_jax.train.stages.frozen import load_init

        def fresh_guider():  # a backbone trained without the pose guider: its weights, the guider zero-output
            still = abstract_model(lambda: E.ETHD.from_svd_config(dict(variant.svd.unet), variant.ethd,
                                                                  rngs=nnx.Rngs(0)))
            return inherit_svd(load_init(cfg.init.ethd, still, "ethd"), ecfg, seed=seed)

        if ecfg.pose and _native_pose(cfg.init.ethd) is False:
            return fresh_guider()
        try:
            return load_init(cfg.init.ethd, ethd_model(cfg, variant, seed, abstract=True), "ethd")
        except ValueError:  # a workdir (or an unreadable config) whose backbone lacks the guider
            if not ecfg.pose:
                raise
        return fresh_guider()
    if cfg.init.svd:
        return load_ethd_from_svd(cfg.init.svd, ecfg, seed=seed)
    log.info("no SVD checkpoint configured (init.svd): ETHD starts from a random SVD UNet")
    unet = host_init(abstract_model(lambda: UNetSpatioTemporal.from_diffusers_config(dict(variant.svd.unet),
                                                                                      rngs=nnx.Rngs(0))), seed)
    return inherit_svd(unet, ecfg, seed=seed)


def _native_pose(path: str) -> bool | None:
    """Whether a native ethd folder's backbone has the pose guider (None: not a readable native folder)."""
    import json
    from pathlib import Path

    try:
        meta = json.loads((Path(path) / "config.json").read_text())
        return bool(meta["config"]["ethd"].get("pose", False))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def motion_inputs(batch: dict, time_ids: tuple, b: int, typical: float | None,
                  pose_on: bool) -> tuple[jax.Array, jax.Array | None]:
    """added_time_ids (B, 3) and the pose (B, F, 4) or None of a stage-2 batch: with `typical` (the
    motion knob on) each clip's motion bucket is 127 x its `motion` / typical, clipped to [0, 255];
    batches without `motion` / `pose` (the gates') keep the constant and no pose."""
    from emotivetalk_jax.data.pose import MAX_BUCKET, TYPICAL_BUCKET

    ids = jnp.broadcast_to(jnp.asarray(time_ids, jnp.float32), (b, 3))
    if typical is not None and "motion" in batch:
        ids = ids.at[:, 1].set(jnp.clip(TYPICAL_BUCKET * jnp.asarray(batch["motion"], jnp.float32) / typical, 0.0,
                                        MAX_BUCKET))
    return ids, (batch.get("pose") if pose_on else None)


def motion_typical(cfg, clips: int = 64) -> float:
    """The pose motion (`data.pose.motion_level`) that maps to SVD's bucket 127: `cfg.motion_typical`,
    or when 0 the median over the first `clips` training clips (deterministic: export-bundle
    measures the same)."""
    value = float(cfg.get("motion_typical", 0.0))
    if value < 0:
        raise ValueError(f"motion_typical must be >= 0 (0: measured from the data), got {value}")
    if value > 0:
        return value
    from emotivetalk_jax.data.pipeline import ClipWindow
    from emotivetalk_jax.train.inputs import make_source

    source = make_source(cfg.data)
    window = ClipWindow(frames=1, size=None, pixels=False, pose=True)
    levels = [float(window.random_map(source[i], np.random.default_rng(0))["motion"])
              for i in range(min(clips, len(source)))]
    value = float(np.median(levels))
    if not value > 0:
        raise ValueError("the training clips' heads do not move (median pose motion 0), so motion_conditioning has "
                         "nothing to learn; turn data.moving_heads on or set motion_typical")
    return value


def build(cfg, *, seed: int, abstract: bool = False) -> Stage:
    from emotivetalk_jax.diffusion.ethd_loss import ETHDBatch, ethd_loss, stage2_trainable
    from emotivetalk_jax.diffusion.long_dicte import vaid_expression
    from emotivetalk_jax.models.ethd_variants import get_ethd_variant
    from emotivetalk_jax.models.vaid_variants import get_vaid_variant

    ev = get_ethd_variant(cfg.variant)
    vv = get_vaid_variant(cfg.vaid_variant or cfg.variant)
    tr = ev.train
    frames = int(cfg.frames or tr.frames)
    ctx = vv.perceiver.window_half_width
    latent = int(ev.svd.unet["sample_size"])
    factor = ev.vae_factor
    size = int(cfg.image_size or latent * factor)
    latent = size // factor
    model = ethd_model(cfg, ev, seed, abstract=abstract)
    groups = {"main": stage2_trainable(tr.train_backbone)}
    graphdef, params, rest = split_model(model, groups, "ethd", cfg)
    vae = vae_model(cfg, ev, seed + 3, abstract=abstract)
    encoder = audio_encoder(cfg, seed + 1, abstract=abstract)
    expr_weight = float(cfg.get("expression_loss_weight", 0.0))
    reader = None
    if cfg.init.get("expression_reader"):
        if not expr_weight > 0:
            raise ValueError("init.expression_reader is read only by the expression term: set expression_loss_weight "
                             "> 0, or leave init.expression_reader empty")
        reader = expression_reader(cfg, size, abstract=abstract)
    modules = Frozen(face=face_encoders(cfg, vv, seed + 2, abstract=abstract),
                     vaid=vaid_model(cfg, vv, seed + 4, abstract=abstract), vae=vae, reader=reader)
    fgraph, fstate = split_frozen(modules)
    scaling = float(vae.config.get("scaling_factor", 0.18215))
    cached = None
    if cfg.get("frozen_cache", False) and not abstract:
        cached = frozen_outputs(fgraph, fstate, modules, encoder, frames=frames, context=ctx, size=size,
                                scaling=scaling, compute_dtype=cfg.compute_dtype)
    ic = ev.inference
    time_ids = (ic.fps - 1, ic.motion_bucket_id, ic.noise_aug)
    motion_on, pose_on = bool(cfg.get("motion_conditioning", False)), bool(cfg.get("pose_condition", False))
    typical = motion_typical(cfg) if motion_on and not abstract else 1.0
    pose_drop = float(cfg.get("pose_drop", 0.3))
    if not 0.0 <= pose_drop <= 1.0:
        raise ValueError(f"pose_drop is a probability, got {pose_drop}")
    labels = (("motion",) if motion_on else ()) + (("pose",) if pose_on else ())
    e_a_steps = int(cfg.e_a_steps or vv.dicte.sample_steps)
    lip_weight = float(cfg.get("lip_loss_weight", 1.0))
    face_weight = float(cfg.get("face_loss_weight", 1.0))
    new_scale = float(cfg.get("new_params_lr_scale", 1.0))
    for name, w in (("lip_loss_weight", lip_weight), ("face_loss_weight", face_weight),
                    ("new_params_lr_scale", new_scale)):
        if not w > 0:
            raise ValueError(f"{name} must be > 0, got {w}")
    if not expr_weight >= 0:
        raise ValueError(f"expression_loss_weight must be >= 0, got {expr_weight}")
    chunk = ic.decode_chunk if frames % ic.decode_chunk == 0 else frames  # the bundle's decode length

    def prepare(frozen, batch, key):
        k_aug, k_ea = jax.random.split(key)
        windows = batch_windows(batch, frames, ctx)
        if "frozen_latents" in batch:  # the loader's per-clip cache (cfg.frozen_cache)
            parts = {k: batch[f"frozen_{k}"] for k in ("latents", "e_v", "l_a", "r_v") if f"frozen_{k}" in batch}
        else:
            parts = _frame_parts(frozen, to_float_image(batch["frames"]), windows, scaling, batch.get("landmarks"))
        latents, e_v, l_a = parts["latents"], parts["e_v"], parts["l_a"]
        b = latents.shape[0]
        ref = to_float_image(batch["reference"])
        ref_latent, _ = frozen.vae.encode(ref + ic.noise_aug * jax.random.normal(k_aug, ref.shape, ref.dtype))
        e_ref = frozen.face.encode_expression(ref, batch.get("reference_landmarks"))
        e_a = vaid_expression(frozen.vaid, windows, ref, e_v[:, 0], k_ea, steps=e_a_steps)
        ids, pose = motion_inputs(batch, time_ids, b, typical if motion_on else None, pose_on)
        out = dict(eb=ETHDBatch(latents, ref_latent, l_a, e_v, e_a, e_ref, ids,
                                batch[f"mask_lip_{latent}"], batch[f"mask_face_{latent}"], pose))
        if frozen.reader is not None:  # the reader on the ground truth (B, F, P) and on the portrait (B, P)
            out.update(r_v=parts["r_v"], r_ref=frozen.reader(ref))
        elif "landmarks" in batch:  # the expression term's aligned encoders read the generated frames with them
            out["landmarks"] = batch["landmarks"]
        return out

    def loss(model, inp, key, aux, frozen=None):
        eb = inp["eb"]
        l, a = ethd_loss(model, eb, key, p_mean=tr.p_mean, p_std=tr.p_std, p_video=tr.p_video_expr,
                         lip_weight=lip_weight, face_weight=face_weight, p_drop_pose=pose_drop)
        out = dict(sigma=jnp.mean(a["sigma"]), used_e_v=jnp.mean(a["used_e_v"].astype(jnp.float32)))
        if expr_weight:
            from emotivetalk_jax.diffusion.ethd_loss import expression_consistency

            d = a["denoised"]
            x = frozen.vae.decode((d / scaling).reshape(-1, *d.shape[2:]), chunk)
            x = x.reshape(*d.shape[:2], *x.shape[1:])
            if frozen.reader is not None:  # in the reader's units (init.expression_reader)
                l_expr = expression_consistency(frozen.reader(x), inp["r_v"], inp["r_ref"], a["kept_expr"])
            else:
                e_x = frozen.face.encode_expression(x, inp.get("landmarks"))
                l_expr = expression_consistency(e_x, eb.e_v, eb.e_ref, a["kept_expr"])
            out.update(loss_x0=l, loss_expr=l_expr)
            l = l + expr_weight * l_expr
        return l, out

    def sample(model, frozen, inp, key):
        """x0 prediction at sigma = cfg.sample_sigma for the batch's first clip, decoded (F, S, S, 3)."""
        from emotivetalk_jax.diffusion.ethd_loss import ethd_denoise

        eb = jax.tree.map(lambda t: t[:1], inp["eb"])
        sigma = jnp.full((1,), cfg.sample_sigma, jnp.float32)
        x_t = eb.latents + sigma[0] * jax.random.normal(key, eb.latents.shape, eb.latents.dtype)
        d = ethd_denoise(model, x_t, sigma, eb.ref_latent, eb.lip_tokens, eb.added_time_ids, eb.e_v, eb.e_ref,
                         eb.lip_mask, eb.face_mask, eb.pose)
        return frozen.vae.decode(d[0] / scaling, frames)

    gate_sigma = float(cfg.get("gate_sigma", 4.0))

    def _gate_inputs(params, rest, x0):
        """(model, sigma (B,), x_t = x0 + gate_sigma n) of the gates' one denoising call."""
        model = nnx.merge(graphdef, *(params[g] for g in groups), rest)
        noise = jax.random.normal(jax.random.fold_in(jax.random.key(0), 1), x0.shape)  # as logged since step 0
        return model, jnp.full(x0.shape[:1], gate_sigma), x0 + gate_sigma * noise

    @jax.jit
    def _x0(params, rest, frozen_state, batch):
        from emotivetalk_jax.diffusion.ethd_loss import ethd_denoise

        frozen = nnx.merge(fgraph, frozen_state)
        eb = prepare(frozen, batch, jax.random.key(0))["eb"]
        model, sigma, x_t = _gate_inputs(params, rest, eb.latents)
        d = ethd_denoise(model, x_t, sigma, eb.ref_latent, eb.lip_tokens, eb.added_time_ids, eb.e_a, eb.e_ref,
                         eb.lip_mask, eb.face_mask)
        # decoded in the bundle's chunks (the VAE's training length) where they divide the window
        flat = (d / scaling).reshape(-1, chunk, *d.shape[2:])
        x = jax.vmap(lambda z: frozen.vae.decode(z, chunk))(flat)
        return x.reshape(-1, frames, *x.shape[2:])

    @jax.jit
    def _transfer(params, rest, frozen_state, batch):
        """(<D(e_e) - D(e_n), z_e - z_n>, |z_e - z_n|^2) per window (`gates.expression_transfer_gate`)."""
        from emotivetalk_jax.diffusion.ethd_loss import ethd_denoise

        frozen, key = nnx.merge(fgraph, frozen_state), jax.random.key(0)
        emo = prepare(frozen, batch, key)["eb"]
        neu = prepare(frozen, dict(batch, frames=batch["neutral_frames"]), key)["eb"]
        model, sigma, x_t = _gate_inputs(params, rest, (emo.latents + neu.latents) / 2)
        dz = emo.latents - neu.latents
        d = [ethd_denoise(model, x_t, sigma, emo.ref_latent, emo.lip_tokens, emo.added_time_ids, e, emo.e_ref,
                          emo.lip_mask, emo.face_mask) for e in (emo.e_v, neu.e_v)]
        axes = tuple(range(1, dz.ndim))
        return jnp.sum((d[0] - d[1]) * dz, axis=axes), jnp.sum(dz * dz, axis=axes)

    def gate(model, frozen):
        _, ev = gates.stage_clips(cfg, size)
        _, *states = nnx.split(model, *groups.values(), ...)
        params = {g: st.to_pure_dict() for g, st in zip(groups, states[:-1])}
        rest = states[-1].to_pure_dict()
        out = gates.denoiser_gates(lambda batch: _x0(params, rest, fstate, batch), encoder, ev, frames=frames,
                                   context=ctx, latent=latent)
        out.update(gates.expression_transfer_gate(lambda batch: _transfer(params, rest, fstate, batch), encoder,
                                                  ev, frames=frames, context=ctx, latent=latent))
        return out

    return Stage(name="ethd", graphdef=graphdef, groups=tuple(groups), init_params=params, init_rest=rest,
                 frozen_graphdef=fgraph, frozen_state=fstate, losses={"main": loss}, prepare=prepare,
                 data=dict(frames=frames, size=size, mask_sizes=(latent,), audio_context=ctx,
                           **({"labels": labels} if labels else {})), model_name="ETHD",
                 sample=sample, audio_encoder=encoder, gate=gate, frozen_outputs=cached,
                 lr_scale=None if new_scale == 1.0 else functools.partial(_new_params_scale, new_scale),
                 loss_reads_frozen=bool(expr_weight))


def _new_params_scale(scale: float, path: tuple[str, ...]) -> float:
    """`new_params_lr_scale` for the parameters ETHD adds to SVD's UNet (`NEW_KEYS`), 1 elsewhere."""
    from emotivetalk_jax.models.ethd import NEW_KEYS

    return scale if any(k in path for k in NEW_KEYS) else 1.0
