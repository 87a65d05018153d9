"""The three training stages as one step function each (and the models they train).

Shape legend: B batch, F frames, S image size, N = F + 2 c audio frames (c context frames
each side), W = 2 c + 1 audio window, D widths.

- stage `encoders` (0, 6.1): `EncoderPretrainer` reconstructs a driving frame from the
  reference frame and its (dropped-out) lip / expression latents; masked MSE by dropout
  configuration (`losses.masked_reconstruction_loss`).
- stage `vaid` (1, eq. 8): V-AID's projector + Di-CTE against the frozen face encoders'
  l_v / e_v with CLUB, then CLUB's q on the same (l_a, e_a): two update groups, two
  optimisers, one jitted step.
- stage `ethd` (2, eq. 11, 6.4): the ETHD backbone under EDM with V-AID, the face
  encoders, the audio encoder and the VAE frozen; e_dri = e_v w.p. 0.6 else e_a.
- stage `vae` (not in the paper, which starts from SVD's trained VAE): SVD's temporal VAE
  trained as an autoencoder on clips (L1 + `vae_kl` x KL, the decoder over the clip's
  frames, decoding the posterior mean, which is what stage 2 and the pipeline use, or a
  posterior sample with `vae_sample=True`),
  for a domain no converted VAE covers (the synthetic demo). Stage 2 takes its workdir as
  `init.vae`. With `vae_train=decoder` and `init.vae` it fine-tunes only the decoder of a
  trained VAE, so the latents stage 2 learnt on stay exactly the same.

Every step takes the raw grain batch (uint8 frames, waveform windows, box masks) and does
all preprocessing inside the same jitted program (frozen encoders under stop_gradient),
so one program runs from a laptop CPU to a pod. Parameters are fp32 master weights; the
forward runs in `compute_dtype`. A non-finite loss or gradient norm leaves parameters and
optimiser state unchanged (as does a non-finite update) and counts the step in `skipped` / `bad_streak`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from emotivetalk_jax import sharding as shd
from emotivetalk_jax.train.state import TrainState, apply_remat, cast_floating, host_init

log = logging.getLogger(__name__)

SAMPLES_PER_FRAME = 640  # 16 kHz audio, 25 fps video
EMA = "ema"  # TrainState.params key of the moving average (not an update group)
# Stage `audio` trains on 48-frame (1.92 s) crops: every synthetic utterance is at least 2 s long.
AUDIO_STAGE_FRAMES = 48

# Class names rematerialised by `remat=blocks` (per stage model).
REMAT_BLOCKS = {
    "ethd": ("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal", "UNetMidBlockSpatioTemporal",
             "UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    "vaid": ("TransformerBlock", "PerceiverBlock"),
    "encoders": ("ResBlock",),
    "vae": ("DownEncoderBlock2D", "UNetMidBlock2D", "MidBlockTemporalDecoder", "UpBlockTemporalDecoder"),
    "audio": ("EncoderLayer",),
}
REMAT_LAYERS = {  # `remat=layers`: finer, every resnet / transformer
    "ethd": ("SpatioTemporalResBlock", "ETHDTransformer"),
    "vaid": ("TransformerBlock", "PerceiverBlock"),
    "encoders": ("ResBlock",),
    "vae": ("ResnetBlock2D", "SpatioTemporalResBlock"),
    "audio": ("EncoderLayer",),
}


class Frozen(nnx.Module):
    """The frozen conditioning models of a stage (any may be None)."""

    def __init__(self, audio=None, face=None, vaid=None, vae=None):
        self.audio, self.face, self.vaid, self.vae = audio, face, vaid, vae


@dataclasses.dataclass
class Stage:
    """A stage's models, update groups and data needs (built by `build_stage`)."""

    name: str
    graphdef: Any
    groups: tuple[str, ...]
    init_params: dict[str, Any]
    init_rest: Any
    frozen_graphdef: Any
    frozen_state: Any
    losses: dict[str, Callable]  # group -> fn(model, inputs, key, prev_aux) -> (loss, aux)
    prepare: Callable  # (frozen, batch, key) -> inputs
    data: dict  # frames, size, mask_sizes, audio_context
    model_name: str = ""
    sample: Callable | None = None  # (model, frozen, inputs) -> video frames in [-1, 1]
    # The frozen audio encoder whose whole-utterance features the loader slices into the
    # batch (`frame_features`, `data.audio_cache`); None: the stage reads no cached features.
    audio_encoder: nnx.Module | None = None
    gate: Callable | None = None  # (model, frozen) -> {"gate/...": float}, host-side (`eval.probes`)

    def model(self, params: dict, rest: Any) -> nnx.Module:
        return nnx.merge(self.graphdef, *(params[g] for g in self.groups), rest)


# ----------------------------------------------------------------------------- inputs


def to_float_image(x: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return x.astype(jnp.float32) / 127.5 - 1.0


def audio_frames(encoder: nnx.Module, wave: jax.Array, num_frames: int) -> jax.Array:
    """Waveform (B, 640 N) -> per-video-frame features (B, N, D): the encoder's last hidden
    state (padded by field - stride samples so that N frames have 2 N features), interpolated
    at each frame's centre exactly as at inference (`data.audio.features_to_frames`).
    The waveform is normalised over the training window (inference: over the utterance)."""
    from emotivetalk_jax.data.audio import features_to_frames
    from emotivetalk_jax.models.wav2vec2 import conv_geometry

    stride, field = conv_geometry(encoder.config)
    wave = wave.astype(jnp.float32)
    wave = (wave - wave.mean(-1, keepdims=True)) / jnp.sqrt(wave.var(-1, keepdims=True) + 1e-7)
    wave = jnp.pad(wave, ((0, 0), (0, field - stride)))
    return features_to_frames(encoder(wave)[-1], num_frames, stride=stride, field=field)


def audio_windows(feats: jax.Array, frames: int, context: int) -> jax.Array:
    """(B, F + 2 c, D) -> A_w (B, F, 2 c + 1, D): the window centred on each video frame."""
    idx = np.arange(frames)[:, None] + np.arange(2 * context + 1)[None, :]
    return feats[:, idx]


def _windows(batch: dict, frames: int, context: int) -> jax.Array:
    """A_w (B, F, W, D) from the loader's `frame_features` rows (the pipeline's own features)."""
    return audio_windows(batch["frame_features"], frames, context)


# ----------------------------------------------------------------------------- model building


def _abstract(factory):
    return nnx.eval_shape(factory)


_ABSTRACT = [False]  # build_stage(abstract=True): shapes only (ahead-of-time compiles of full-size stages)


def _init(abstract_model: nnx.Module, seed: int) -> nnx.Module:
    return abstract_model if _ABSTRACT[0] else host_init(abstract_model, seed)


def _audio_abstract(cfg) -> nnx.Module:
    from emotivetalk_jax.convert.audio import build_audio_encoder

    return build_audio_encoder(cfg.audio_encoder.to_dict(), abstract=True)


def audio_encoder(cfg, seed: int) -> nnx.Module:
    """The audio encoder of `cfg.init.audio`: an `audio`-stage workdir, a converted
    (`emotivetalk convert audio`) or Hugging Face folder; random when unset."""
    from pathlib import Path

    from emotivetalk_jax.convert.audio import load_hf_audio_encoder

    if cfg.init.audio:
        from emotivetalk_jax.convert import native

        path = cfg.init.audio
        if (Path(path) / "checkpoints").is_dir():
            return _from_workdir(path, _audio_abstract(cfg), "encoder")
        try:
            return native.load_model(path)
        except Exception:  # not a native folder: a Hugging Face one
            return load_hf_audio_encoder(path)
    log.info("no audio encoder checkpoint configured (init.audio): random %s-wide wav2vec2",
             cfg.audio_encoder.hidden_size)
    return _init(_audio_abstract(cfg), seed)


def _from_workdir(path: str, abstract: nnx.Module, subtree: str | None = None) -> nnx.Module:
    """Fill `abstract` from the latest training checkpoint in `path` (its params + rest)."""
    from emotivetalk_jax.convert.engine import fill_from_arrays
    from emotivetalk_jax.train.checkpoint import restore_model_arrays

    return fill_from_arrays(abstract, restore_model_arrays(path), path, subtree=subtree)


def face_encoders(cfg, variant, seed: int) -> nnx.Module:
    from emotivetalk_jax.models.face_encoders import FaceEncoders

    abstract = _abstract(lambda: FaceEncoders(variant.face, rngs=nnx.Rngs(0)))
    if cfg.init.face_encoders:
        return _from_workdir(cfg.init.face_encoders, abstract, "encoders")
    log.info("no stage-0 workdir configured (init.face_encoders): random face encoders")
    return _init(abstract, seed)


def vaid_model(cfg, variant, seed: int) -> nnx.Module:
    from emotivetalk_jax.models.vaid import VAID

    abstract = _abstract(lambda: VAID(variant, rngs=nnx.Rngs(0)))
    if cfg.init.vaid:
        return _from_workdir(cfg.init.vaid, abstract)
    log.info("no stage-1 workdir configured (init.vaid): random V-AID")
    return _init(abstract, seed)


def _vae_abstract(variant) -> nnx.Module:
    from emotivetalk_jax.convert import svd

    return _abstract(lambda: svd.build("vae", dict(variant.svd.vae), rngs=nnx.Rngs(0)))


def vae_model(cfg, variant, seed: int) -> nnx.Module:
    from emotivetalk_jax.convert import svd

    abstract = _vae_abstract(variant)
    if cfg.init.get("vae"):
        vae = _from_workdir(cfg.init.vae, abstract)
        vae.config = {**vae.config, "scaling_factor": vae_scaling_factor(cfg.init.vae)}
        return vae
    if cfg.init.svd:
        return svd.load_diffusers_vae(cfg.init.svd)
    log.info("no VAE configured (init.vae / init.svd): random VAE")
    return _init(abstract, seed)


def vae_scaling_factor(workdir: str, rows: int = 20) -> float:
    """1 / the latent std a `vae`-stage run logged over its last `rows` logged steps: SVD's
    `scaling_factor` (0.18215 for its own VAE) for a VAE trained here, so that stage 2's
    scaled latents have unit variance whatever the KL weight let the latents drift to."""
    import json
    from pathlib import Path

    path = Path(workdir) / "metrics.jsonl"
    try:
        stds = [json.loads(line)["latent_std"] for line in path.read_text().splitlines() if "latent_std" in line]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: cannot read the VAE run's latent_std ({e}); is {workdir} a `vae`-stage workdir?")
    if not stds:
        raise ValueError(f"{path} logs no latent_std; is {workdir} a `vae`-stage workdir?")
    return float(1.0 / np.mean(stds[-rows:]))


def _ethd(cfg, variant, seed: int) -> nnx.Module:
    from emotivetalk_jax.convert.ethd import inherit_svd, load_ethd_from_svd
    from emotivetalk_jax.models import ethd as E
    from emotivetalk_jax.models.unet import UNetSpatioTemporal

    if _ABSTRACT[0]:
        return _abstract(lambda: E.ETHD.from_svd_config(dict(variant.svd.unet), variant.ethd, rngs=nnx.Rngs(0)))
    if cfg.init.svd:
        return load_ethd_from_svd(cfg.init.svd, variant.ethd, seed=seed)
    log.info("no SVD checkpoint configured (init.svd): ETHD starts from a random SVD UNet")
    unet = host_init(_abstract(lambda: UNetSpatioTemporal.from_diffusers_config(dict(variant.svd.unet),
                                                                                 rngs=nnx.Rngs(0))), seed)
    return inherit_svd(unet, variant.ethd, seed=seed)


def _remat_names(cfg, stage: str) -> tuple[str, ...]:
    r = (cfg.remat or "none").strip()
    if r == "none":
        return ()
    if r == "blocks":
        return REMAT_BLOCKS[stage]
    if r == "layers":
        return REMAT_LAYERS[stage]
    return tuple(n.strip() for n in r.split(",") if n.strip())


def _split(model: nnx.Module, groups: dict[str, Any], stage: str, cfg) -> tuple:
    n = apply_remat(model, _remat_names(cfg, stage), cfg.remat_policy)
    if n:
        log.info("rematerialising %d modules (%s)", n, cfg.remat)
    graphdef, *states = nnx.split(model, *groups.values(), ...)
    params = {g: s.to_pure_dict() for g, s in zip(groups, states[:-1])}
    return graphdef, params, states[-1].to_pure_dict()


def _split_frozen(frozen: Frozen) -> tuple:
    graphdef, state = nnx.split(frozen)
    return graphdef, state.to_pure_dict()


# ----------------------------------------------------------------------------- stages


def _stage_encoders(cfg, seed: int) -> Stage:
    from emotivetalk_jax.data.synthetic_speech import EMOTIONS
    from emotivetalk_jax.losses import emotion_label_loss, masked_reconstruction_loss, sample_dropout_configs
    from emotivetalk_jax.models.face_encoders import EncoderPretrainer, stage0_trainable
    from emotivetalk_jax.models.vaid_variants import get_vaid_variant

    v = get_vaid_variant(cfg.variant)
    size = int(cfg.image_size or v.face.image_size)
    label_weight = float(v.loss.emotion_label_weight)
    emotions = len(EMOTIONS) if label_weight > 0 else 0
    model = _init(_abstract(lambda: EncoderPretrainer(v.face, v.decoder, emotions=emotions, rngs=nnx.Rngs(0))), seed)
    groups = {"main": stage0_trainable(v.face)}
    graphdef, params, rest = _split(model, groups, "encoders", cfg)
    fgraph, fstate = _split_frozen(Frozen())

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
        from emotivetalk_jax.eval import probes

        return probes.face_gates(model.encoders, *_probe_clips(cfg, size))

    return Stage("encoders", graphdef, tuple(groups), params, rest, fgraph, fstate, {"main": loss}, prepare,
                 dict(frames=1, size=size, mask_sizes=(size,), audio_context=0), "EncoderPretrainer", gate=gate)


def _stage_vaid(cfg, seed: int) -> Stage:
    from emotivetalk_jax.losses import club_loss, vaid_loss
    from emotivetalk_jax.models.vaid import STAGE1_CLUB, STAGE1_MAIN, VAID, VAIDBatch
    from emotivetalk_jax.models.vaid_variants import get_vaid_variant

    v = get_vaid_variant(cfg.variant)
    frames = int(cfg.frames or v.dicte.train_frames)
    ctx = v.perceiver.window_half_width
    size = int(cfg.image_size or v.face.image_size)
    model = _init(_abstract(lambda: VAID(v, rngs=nnx.Rngs(0))), seed)
    groups = {"main": STAGE1_MAIN, "club": STAGE1_CLUB}
    graphdef, params, rest = _split(model, groups, "vaid", cfg)
    encoder = audio_encoder(cfg, seed + 1)
    fgraph, fstate = _split_frozen(Frozen(face=face_encoders(cfg, v, seed + 2)))

    def prepare(frozen, batch, key):
        frames_f = to_float_image(batch["frames"])
        l_v, e_v = frozen.face(frames_f)
        return dict(vb=VAIDBatch(_windows(batch, frames, ctx), to_float_image(batch["reference"]), l_v, e_v))

    def main(model, inp, key, aux):
        total, a = vaid_loss(model, inp["vb"], key)
        return total, dict(lip=a["lip"], exp=a["exp"], club=a["club"], l_a=a["l_a"], e_a=a["e_a"])

    def club(model, inp, key, aux):
        return club_loss(model, aux["l_a"], aux["e_a"]), {}

    def gate(model, frozen):
        from emotivetalk_jax.eval import probes

        fit, ev = _probe_clips(cfg, size)
        return probes.lip_audio_gates(model, encoder, fit, ev, frames=frames)

    return Stage("vaid", graphdef, tuple(groups), params, rest, fgraph, fstate, {"main": main, "club": club},
                 prepare, dict(frames=frames, size=size, mask_sizes=(), audio_context=ctx), "VAID",
                 audio_encoder=encoder, gate=gate)


def _stage_ethd(cfg, seed: int) -> Stage:
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
    model = _ethd(cfg, ev, seed)
    groups = {"main": stage2_trainable(tr.train_backbone)}
    graphdef, params, rest = _split(model, groups, "ethd", cfg)
    vae = vae_model(cfg, ev, seed + 3)
    encoder = audio_encoder(cfg, seed + 1)
    fgraph, fstate = _split_frozen(Frozen(face=face_encoders(cfg, vv, seed + 2), vaid=vaid_model(cfg, vv, seed + 4),
                                          vae=vae))
    scaling = float(vae.config.get("scaling_factor", 0.18215))
    ic = ev.inference
    time_ids = (ic.fps - 1, ic.motion_bucket_id, ic.noise_aug)
    e_a_steps = int(cfg.e_a_steps or vv.dicte.sample_steps)
    lip_weight = float(cfg.get("lip_loss_weight", 1.0))
    if lip_weight <= 0:
        raise ValueError(f"lip_loss_weight must be > 0, got {lip_weight}")

    def prepare(frozen, batch, key):
        k_aug, k_ea = jax.random.split(key)
        x = to_float_image(batch["frames"])  # (B, F, S, S, 3)
        b = x.shape[0]
        mean, _ = frozen.vae.encode(x.reshape(-1, *x.shape[2:]))
        latents = (mean * scaling).reshape(b, frames, *mean.shape[1:])
        ref = to_float_image(batch["reference"])
        ref_latent, _ = frozen.vae.encode(ref + ic.noise_aug * jax.random.normal(k_aug, ref.shape, ref.dtype))
        windows = _windows(batch, frames, ctx)
        _, e_v = frozen.face(x)
        e_ref = frozen.face.encode_expression(ref)
        l_a = frozen.vaid.lip(windows)
        e_a = vaid_expression(frozen.vaid, windows, ref, e_v[:, 0], k_ea, steps=e_a_steps)
        ids = jnp.broadcast_to(jnp.asarray(time_ids, jnp.float32), (b, 3))
        return dict(eb=ETHDBatch(latents, ref_latent, l_a, e_v, e_a, e_ref, ids,
                                 batch[f"mask_lip_{latent}"], batch[f"mask_face_{latent}"]))

    def loss(model, inp, key, aux):
        l, a = ethd_loss(model, inp["eb"], key, p_mean=tr.p_mean, p_std=tr.p_std, p_video=tr.p_video_expr,
                         lip_weight=lip_weight)
        return l, dict(sigma=jnp.mean(a["sigma"]), used_e_v=jnp.mean(a["used_e_v"].astype(jnp.float32)))

    def sample(model, frozen, inp, key):
        """x0 prediction at sigma = cfg.sample_sigma for the batch's first clip, decoded (F, S, S, 3)."""
        from emotivetalk_jax.diffusion.ethd_loss import ethd_denoise

        eb = jax.tree.map(lambda t: t[:1], inp["eb"])
        sigma = jnp.full((1,), cfg.sample_sigma, jnp.float32)
        x_t = eb.latents + sigma[0] * jax.random.normal(key, eb.latents.shape, eb.latents.dtype)
        d = ethd_denoise(model, x_t, sigma, eb.ref_latent, eb.lip_tokens, eb.added_time_ids, eb.e_v, eb.e_ref,
                         eb.lip_mask, eb.face_mask)
        return frozen.vae.decode(d[0] / scaling, frames)

    gate_sigma = float(cfg.get("gate_sigma", 4.0))

    @jax.jit
    def _x0(params, rest, frozen_state, batch):
        from emotivetalk_jax.diffusion.ethd_loss import ethd_denoise

        model = nnx.merge(graphdef, *(params[g] for g in groups), rest)
        frozen = nnx.merge(fgraph, frozen_state)
        key = jax.random.key(0)
        eb = prepare(frozen, batch, key)["eb"]
        b = eb.latents.shape[0]
        sigma = jnp.full((b,), gate_sigma, jnp.float32)
        x_t = eb.latents + gate_sigma * jax.random.normal(jax.random.fold_in(key, 1), eb.latents.shape)
        d = ethd_denoise(model, x_t, sigma, eb.ref_latent, eb.lip_tokens, eb.added_time_ids, eb.e_a, eb.e_ref,
                         eb.lip_mask, eb.face_mask)
        flat = (d / scaling).reshape(-1, frames, *d.shape[2:])
        return jax.vmap(lambda z: frozen.vae.decode(z, frames))(flat)

    def gate(model, frozen):
        from emotivetalk_jax.eval import probes

        _, ev = _probe_clips(cfg, size)
        _, *states = nnx.split(model, *groups.values(), ...)
        params = {g: st.to_pure_dict() for g, st in zip(groups, states[:-1])}
        fn = lambda batch: _x0(params, states[-1].to_pure_dict(), fstate, batch)  # noqa: E731
        return probes.denoiser_gates(fn, encoder, ev, frames=frames, context=ctx, latent=latent)

    return Stage("ethd", graphdef, tuple(groups), params, rest, fgraph, fstate, {"main": loss}, prepare,
                 dict(frames=frames, size=size, mask_sizes=(latent,), audio_context=ctx), "ETHD", sample,
                 audio_encoder=encoder, gate=gate)


# vae_train: what stage `vae` updates. "decoder" keeps the encoder (and so every latent stage 2
# trained on) fixed while the decoder keeps learning, so a decoder fine-tune can run next to, or
# after, stage 2 and still pair with it (`export-bundle --vae`); SD's ft-MSE VAE was made this way.
VAE_PARTS = {"all": nnx.Param, "decoder": nnx.All(nnx.Param, nnx.PathContains("decoder"))}


def _stage_vae(cfg, seed: int) -> Stage:
    from emotivetalk_jax.models.ethd_variants import get_ethd_variant

    ev = get_ethd_variant(cfg.variant)
    frames = int(cfg.frames or ev.train.frames)
    size = int(cfg.image_size or ev.resolution)
    part = cfg.get("vae_train", "all")
    if part not in VAE_PARTS:
        raise ValueError(f"vae_train={part!r}: choose {' or '.join(VAE_PARTS)}")
    abstract = _vae_abstract(ev)
    if cfg.init.get("vae"):
        model = _from_workdir(cfg.init.vae, abstract)
    elif part == "decoder":
        raise ValueError("vae_train=decoder fine-tunes the decoder of a trained VAE: set init.vae to its `vae` workdir")
    else:
        model = _init(abstract, seed)
    groups = {"main": VAE_PARTS[part]}
    graphdef, params, rest = _split(model, groups, "vae", cfg)
    fgraph, fstate = _split_frozen(Frozen())
    kl_weight = float(cfg.get("vae_kl", 1e-6))
    sample = bool(cfg.get("vae_sample", False))

    def prepare(frozen, batch, key):
        return dict(x=to_float_image(batch["frames"]))  # (B, F, S, S, 3)

    def loss(model, inp, key, aux):
        from emotivetalk_jax.models.vae import sample_latent

        x = inp["x"].reshape(-1, *inp["x"].shape[2:])
        mean, logvar = model.encode(x)
        z = sample_latent(mean, logvar, key) if sample else mean
        rec = model.decode(z, frames).astype(jnp.float32)
        l1 = jnp.mean(jnp.abs(rec - x))
        mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
        kl = 0.5 * jnp.mean(jnp.sum(mean**2 + jnp.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3)))
        psnr = -10.0 * jnp.log10(jnp.mean(jnp.square(rec - x)) / 4.0)  # images span [-1, 1]: peak-to-peak 2
        return l1 + kl_weight * kl, dict(l1=l1, kl=kl, psnr=psnr, latent_std=jnp.std(mean))

    return Stage("vae", graphdef, tuple(groups), params, rest, fgraph, fstate, {"main": loss}, prepare,
                 dict(frames=frames, size=size, mask_sizes=(), audio_context=0), "AutoencoderKLTemporalDecoder")


def _stage_audio(cfg, seed: int) -> Stage:
    from emotivetalk_jax.losses import lip_loss
    from emotivetalk_jax.models.audio_lip import AudioLipModel, LipHead
    from emotivetalk_jax.models.vaid_variants import get_vaid_variant

    v = get_vaid_variant(cfg.variant)
    frames = int(cfg.frames or AUDIO_STAGE_FRAMES)
    ctx = v.perceiver.window_half_width
    size = int(cfg.image_size or v.face.image_size)
    encoder = audio_encoder(cfg, seed + 1)
    width = int(encoder.config["hidden_size"])
    head = _init(_abstract(lambda: LipHead(2 * ctx + 1, width, v.face.lip_dim, rngs=nnx.Rngs(0))), seed)
    model = AudioLipModel(encoder, head)
    groups = {"main": nnx.Param}
    graphdef, params, rest = _split(model, groups, "audio", cfg)
    fgraph, fstate = _split_frozen(Frozen(face=face_encoders(cfg, v, seed + 2)))
    lw = v.loss

    def prepare(frozen, batch, key):
        return dict(l_v=frozen.face.encode_lip(to_float_image(batch["frames"])), wave=batch["audio"])

    def loss(model, inp, key, aux):
        feats = audio_frames(model.encoder, inp["wave"], frames + 2 * ctx)
        pred = model.head(audio_windows(feats, frames, ctx)).astype(jnp.float32)
        return lip_loss(pred, inp["l_v"], alpha=lw.lip_alpha, beta=lw.lip_beta, tau=lw.tau), {}

    def gate(model, frozen):
        from emotivetalk_jax.eval import probes

        fit, ev = _probe_clips(cfg, size)
        return probes.audio_window_gate(probes.inference_windows(model.encoder, fit, ctx),
                                        probes.inference_windows(model.encoder, ev, ctx), fit, ev)

    return Stage("audio", graphdef, tuple(groups), params, rest, fgraph, fstate, {"main": loss}, prepare,
                 dict(frames=frames, size=size, mask_sizes=(), audio_context=ctx), "AudioLipModel", gate=gate)


def _probe_clips(cfg, size: int):
    """(fit, eval) clips of the learning gates (`eval.probes`), rendered at `size`."""
    from emotivetalk_jax.eval import probes

    n, seed = int(cfg.get("gate_clips", 16)), int(cfg.data.data_seed)
    motion = float(cfg.data.get("head_motion", 1.0))
    return probes.probe_clips("train", n, size, seed, motion), probes.probe_clips("test", n, size, seed, motion)


STAGES = {"encoders": _stage_encoders, "audio": _stage_audio, "vaid": _stage_vaid, "ethd": _stage_ethd,
          "vae": _stage_vae}


def build_stage(cfg, *, abstract: bool = False) -> Stage:
    """The stage `cfg.stage`; `abstract=True` builds shapes only (nothing allocated or loaded)."""
    if cfg.stage not in STAGES:
        raise ValueError(f"unknown stage {cfg.stage!r}; choose one of {', '.join(STAGES)}")
    _ABSTRACT[0] = abstract
    try:
        return STAGES[cfg.stage](cfg, int(cfg.seed))
    finally:
        _ABSTRACT[0] = False


# ----------------------------------------------------------------------------- the step


def init_state(stage: Stage, txs: dict[str, optax.GradientTransformation], seed: int, *,
               ema_decay: float = 0.0) -> TrainState:
    """The step-0 state (host arrays; `loop` places it on the mesh). With `ema_decay` > 0,
    `params["ema"]` holds an exponential moving average of the first group's parameters
    (what `export-bundle` ships: `checkpoint.restore_model_arrays(..., ema=True)`)."""
    opt = {g: txs[g].init(stage.init_params[g]) for g in stage.groups}
    params = dict(stage.init_params)
    if ema_decay > 0:
        params[EMA] = jax.tree.map(lambda x: x, stage.init_params[stage.groups[0]])
    zero = jnp.zeros((), jnp.int32)
    return TrainState(params, stage.init_rest, opt, zero, zero, zero, jax.random.key_data(jax.random.key(seed)))


def abstract_state(stage: Stage, txs: dict[str, optax.GradientTransformation], seed: int, *,
                   ema_decay: float = 0.0) -> TrainState:
    return jax.eval_shape(lambda: init_state(stage, txs, seed, ema_decay=ema_decay))


def make_step(stage: Stage, txs: dict[str, optax.GradientTransformation], schedules: dict[str, optax.Schedule],
              *, compute_dtype=jnp.float32, mesh=None, ema_decay: float = 0.0) -> Callable:
    """step(state, frozen_state, batch) -> (state, metrics): every update group in order, then
    the EMA of the first group (`ema_decay` > 0; a skipped step leaves it unchanged).

    Metrics (scalars): loss (the first group's), loss/<group>, every aux scalar, grad_norm/<group>,
    lr/<group>, finite, skipped, bad_streak.
    """
    compute_dtype = jnp.dtype(compute_dtype)

    def step(state: TrainState, frozen_state: Any, batch: dict) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        k_prep, k_loss = jax.random.split(key)
        batch = shd.constrain_batch(batch, mesh)
        frozen = nnx.merge(stage.frozen_graphdef, cast_floating(frozen_state, compute_dtype))
        inputs = jax.lax.stop_gradient(stage.prepare(frozen, batch, k_prep))
        inputs = shd.constrain_batch(cast_floating(inputs, compute_dtype), mesh)
        params, opt = dict(state.params), dict(state.opt)
        metrics, aux, all_ok = {}, {}, jnp.bool_(True)
        for i, g in enumerate(stage.groups):
            def loss_fn(p, g=g):
                full = {**params, g: p}
                model = stage.model(cast_floating(full, compute_dtype), cast_floating(state.rest, compute_dtype))
                loss, a = stage.losses[g](model, inputs, jax.random.fold_in(k_loss, i), aux)
                return loss.astype(jnp.float32), a

            (loss, a), grads = jax.value_and_grad(loss_fn, has_aux=True)(params[g])
            gnorm = optax.global_norm(grads)
            updates, new_opt = txs[g].update(grads, opt[g], params[g])
            ok = jnp.isfinite(loss) & jnp.isfinite(gnorm) & jnp.isfinite(optax.global_norm(updates))
            new_p = optax.apply_updates(params[g], updates)
            params[g] = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_p, params[g])
            opt[g] = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_opt, opt[g])
            aux = {k: jax.lax.stop_gradient(v) for k, v in a.items()}
            all_ok = all_ok & ok
            metrics[f"loss/{g}"] = loss
            metrics[f"grad_norm/{g}"] = gnorm
            metrics[f"lr/{g}"] = jnp.asarray(schedules[g](state.step), jnp.float32)
            metrics.update({f"{k}": v.astype(jnp.float32) for k, v in a.items() if jnp.ndim(v) == 0})
        if ema_decay > 0:
            params[EMA] = jax.tree.map(lambda e, p: jnp.where(all_ok, ema_decay * e + (1 - ema_decay) * p, e),
                                       params[EMA], params[stage.groups[0]])
        metrics["loss"] = metrics[f"loss/{stage.groups[0]}"]
        bad = jnp.where(all_ok, 0, state.bad_streak + 1)
        skipped = state.skipped + (~all_ok).astype(jnp.int32)
        metrics.update(finite=all_ok.astype(jnp.float32), skipped=skipped, bad_streak=bad)
        new = TrainState(params, state.rest, opt, state.step + 1, skipped, bad, state.rng)
        return new, metrics

    return step
