"""Stage `vae` (not in the paper, which starts from SVD's trained VAE): SVD's temporal VAE
trained as an autoencoder on clips (L1 + `vae_kl` x KL, the decoder over the clip's frames,
decoding the posterior mean, which is what stage 2 and the pipeline use, or a posterior
sample with `vae_sample=True`), for a domain no converted VAE covers (the synthetic demo).
`vae_face_weight` weights the L1 inside the face box and `vae_edge_weight` adds an L1 on image
gradients (not in SVD's recipe: the demo's small VAE otherwise flattens the expression, whose
lines move by a pixel or two at 64 px). `vae_expression_weight` adds the frozen expression
encoder's relative error on the reconstruction (`ethd_loss.expression_consistency`: 0 = the
frames' own expression, 1 = the neutral portrait's), for the cues an L1 ignores because they
cover a few pixels (the mouth corners). Stage 2 takes its workdir as `init.vae`. With
`vae_train=decoder` and `init.vae` it fine-tunes only the decoder of a trained VAE, so the
latents stage 2 learnt on stay exactly the same.

Shape legend: B batch, F frames, S image size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.train.stages.common import Frozen, Stage, initialised, split_frozen, split_model, to_float_image
from emotivetalk_jax.train.stages.frozen import load_init, vae_abstract

# vae_train: what stage `vae` updates. "decoder" keeps the encoder (and so every latent stage 2
# trained on) fixed while the decoder keeps learning, so a decoder fine-tune can run next to, or
# after, stage 2 and still pair with it (`export-bundle --vae`); SD's ft-MSE VAE was made this way.
VAE_PARTS = {"all": nnx.Param, "decoder": nnx.All(nnx.Param, nnx.PathContains("decoder"))}


def _weighted_mean(err: jax.Array, w: jax.Array | None) -> jax.Array:
    if w is None:
        return jnp.mean(err)
    w = jnp.broadcast_to(w, err.shape)
    return jnp.sum(w * err) / jnp.sum(w)


def reconstruction_l1(rec: jax.Array, x: jax.Array, w: jax.Array | None = None) -> jax.Array:
    """Mean |rec - x| over (N, S, S, C) images, weighted per pixel by w (N, S, S, 1) if given."""
    return _weighted_mean(jnp.abs(rec - x), w)


def edge_l1(rec: jax.Array, x: jax.Array, w: jax.Array | None = None) -> jax.Array:
    """Mean |grad rec - grad x| over forward differences along x and y (the thin lines an
    expression moves: brows, lids, lip corners, which an L1 on pixels blurs at little cost),
    weighted like `reconstruction_l1` (the weight of each difference is that of its first pixel)."""
    out = 0.0
    for axis in (1, 2):
        n = rec.shape[axis] - 1
        d = jnp.diff(rec, axis=axis) - jnp.diff(x, axis=axis)
        out = out + _weighted_mean(jnp.abs(d), None if w is None else jax.lax.slice_in_dim(w, 0, n, axis=axis))
    return out / 2


def build(cfg, *, seed: int, abstract: bool = False) -> Stage:
    from emotivetalk_jax.models.ethd_variants import get_ethd_variant

    ev = get_ethd_variant(cfg.variant)
    frames = int(cfg.frames or ev.train.frames)
    size = int(cfg.image_size or ev.resolution)
    part = cfg.get("vae_train", "all")
    if part not in VAE_PARTS:
        raise ValueError(f"vae_train={part!r}: choose {' or '.join(VAE_PARTS)}")
    model = vae_abstract(ev)
    if cfg.init.get("vae"):  # a `vae` workdir or a native vae folder
        model = load_init(cfg.init.vae, model, "vae")
    elif part == "decoder":
        raise ValueError("vae_train=decoder fine-tunes the decoder of a trained VAE: set init.vae to its `vae` workdir")
    else:
        model = initialised(model, seed, abstract)
    groups = {"main": VAE_PARTS[part]}
    graphdef, params, rest = split_model(model, groups, "vae", cfg)
    expr_weight = float(cfg.get("vae_expression_weight", 0.0))
    if not expr_weight >= 0:
        raise ValueError(f"vae_expression_weight must be >= 0, got {expr_weight}")
    face = None
    if expr_weight:
        from emotivetalk_jax.models.vaid_variants import get_vaid_variant
        from emotivetalk_jax.train.stages.frozen import face_encoders

        if float(cfg.data.get("reference_neutral", 0.0)) != 1.0:
            raise ValueError("vae_expression_weight measures the error against the neutral portrait: "
                             "set data.reference_neutral=1")
        face = face_encoders(cfg, get_vaid_variant(cfg.vaid_variant or cfg.variant), seed + 2, abstract=abstract)
    fgraph, fstate = split_frozen(Frozen(face=face))
    kl_weight = float(cfg.get("vae_kl", 1e-6))
    sample = bool(cfg.get("vae_sample", False))
    face_weight = float(cfg.get("vae_face_weight", 1.0))
    edge_weight = float(cfg.get("vae_edge_weight", 0.0))
    lip_weight = float(cfg.get("vae_lip_weight", 1.0))
    if not face_weight > 0 or not lip_weight > 0 or not edge_weight >= 0:
        raise ValueError("vae_face_weight and vae_lip_weight must be > 0 and vae_edge_weight >= 0, got "
                         f"{face_weight}, {lip_weight}, {edge_weight}")
    masks = (size,) if (face_weight, lip_weight) != (1.0, 1.0) else ()

    def prepare(frozen, batch, key):
        inp = dict(x=to_float_image(batch["frames"]))  # (B, F, S, S, 3)
        if masks:  # (B, S, S, 1) each
            inp["face"], inp["lip"] = batch[f"mask_face_{size}"], batch[f"mask_lip_{size}"]
        if expr_weight:  # the frames' expression (B, F, De) and the neutral portrait's (B, De)
            inp["e_x"] = frozen.face.encode_expression(inp["x"], batch.get("landmarks"))
            inp["e_ref"] = frozen.face.encode_expression(to_float_image(batch["reference"]),
                                                         batch.get("reference_landmarks"))
            if "landmarks" in batch:  # aligned encoders read the reconstructions with the frames' landmarks
                inp["landmarks"] = batch["landmarks"]
        return inp

    def loss(model, inp, key, aux, frozen=None):
        from emotivetalk_jax.models.vae import sample_latent

        x = inp["x"].reshape(-1, *inp["x"].shape[2:])
        mean, logvar = model.encode(x)
        z = sample_latent(mean, logvar, key) if sample else mean
        rec = model.decode(z, frames).astype(jnp.float32)
        w = None
        if masks:  # the reference's face and lip boxes, for every frame of its clip
            w = 1.0 + (face_weight - 1.0) * inp["face"] + (lip_weight - 1.0) * inp["lip"]
            w = jnp.repeat(w, frames, axis=0)
        l1 = reconstruction_l1(rec, x, w)
        mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
        kl = 0.5 * jnp.mean(jnp.sum(mean**2 + jnp.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3)))
        psnr = -10.0 * jnp.log10(jnp.mean(jnp.square(rec - x)) / 4.0)  # images span [-1, 1]: peak-to-peak 2
        total, metrics = l1 + kl_weight * kl, dict(l1=l1, kl=kl, psnr=psnr, latent_std=jnp.std(mean))
        if edge_weight:
            edge = edge_l1(rec, x, w)
            total, metrics = total + edge_weight * edge, dict(metrics, edge=edge)
        if expr_weight:
            from emotivetalk_jax.diffusion.ethd_loss import expression_consistency

            e_rec = frozen.face.encode_expression(rec.reshape(inp["x"].shape), inp.get("landmarks"))
            keep = jnp.ones(e_rec.shape[:1], bool)
            expr = expression_consistency(e_rec, inp["e_x"], inp["e_ref"], keep)
            total, metrics = total + expr_weight * expr, dict(metrics, expr=expr)
        return total, metrics

    return Stage(name="vae", graphdef=graphdef, groups=tuple(groups), init_params=params, init_rest=rest,
                 frozen_graphdef=fgraph, frozen_state=fstate, losses={"main": loss}, prepare=prepare,
                 data=dict(frames=frames, size=size, mask_sizes=masks, audio_context=0),
                 model_name="AutoencoderKLTemporalDecoder", loss_reads_frozen=bool(expr_weight))
