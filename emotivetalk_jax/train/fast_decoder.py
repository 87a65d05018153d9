"""`emotivetalk fast-decoder train | add`: a small frame-wise decoder distilled from a bundle's VAE
decoder (`models/fast_decoder.py`), for `generate --fast-decode` (issue 29: real time on a CPU).

Shape legend: M training frames, h, w latent size, L latent channels, R resolution.

Pairs (latent, the bundle's full decoder output on it), decoded exactly as the pipeline decodes
(`EmotiveTalkPipeline.decode`: its chunks of frames, rounded to uint8), from three sources:

* clean: the VAE encoder's posterior mean of `frames` consecutive frames of each training clip
  of the bundle's synthetic domain (`data.synthetic`, split "train", at the bundle's head motion);
* noisy: the same latents plus Gaussian noise, per clip a sigma uniform in [0, `noise`]
  (unscaled latent units; the latents' std is about 1), decoded again;
* sampled: the latents the pipeline itself produces (its own sampler, 1 and 2 steps
  alternately) for `sampled` training clips, with the clip's portrait, speech (its first
  `SAMPLED_FRAMES` frames: one length, one compile) and emotion.

Each pair also keeps its clip's portrait (the pipeline's x_ref, uint8) and that portrait's VAE
encoder mean (z_ref, unscaled), which a decoder with `reference` on reads (`models/fast_decoder.py`);
the pipeline gives it the same two (`EmotiveTalkPipeline.decode_reference`), and the portrait's
face box as a mask, which weights the loss.

Validation: the same sources from test-split clips `VAL_FIRST ..` (held-out identities, clear
of the clips `bench-synthetic` scores, 0-31). The decoder trains full-batch-in-memory with AdamW
and an L1 loss on pixels in [-1, 1], optionally `face_weight` times inside the face box plus
`edge_weight` times an L1 on image gradients (as the demo's VAE decoder fine-tune,
`train.stages.vae`; off by default: 8 and 2 moved neither the PSNR nor the expression read back
from the portrait-reading decoder's frames in a 1000-step gate); its PSNR against the full decoder
on the validation pairs
is logged every `eval_every` steps (`OUT/report.json`). The result is saved as
`fast_decoder.safetensors` + `fast_decoder.json` (no pickle) and put into a bundle as
`fast_decoder/` by `add` (`bundle.add_fast_decoder`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from emotivetalk_jax.models.fast_decoder import FastDecoder, FastDecoderConfig

VAL_FIRST = 64  # validation clips: test-split clips from here (bench-synthetic scores 0..31)
SAMPLED_STEPS = (1, 2)
SAMPLED_FRAMES = 48  # every clip of the domain is longer (2 s at least)


class FastDecoderError(ValueError):
    """A fast decoder that cannot be trained, loaded or used; the message says why, in one line."""


@dataclasses.dataclass
class DecoderPairs:
    """Latents (M, h, w, L) unscaled, the full decoder's frames (M, R, R, 3) uint8, the source of
    each, and the portraits they animate: K clips' x_ref (K, R, R, 3) uint8, z_ref (K, h, w, L)
    unscaled and face box mask `face` (K, R, R) in {0, 1}, `portrait` (M,) the index of each pair's."""

    latents: np.ndarray
    frames: np.ndarray
    source: np.ndarray  # (M,) "clean" | "noisy" | "sampled"
    portrait: np.ndarray
    x_ref: np.ndarray
    z_ref: np.ndarray
    face: np.ndarray

    FIELDS = ("latents", "frames", "source", "portrait", "x_ref", "z_ref", "face")

    def subset(self, kind: str) -> "DecoderPairs":
        keep = self.source == kind
        return DecoderPairs(self.latents[keep], self.frames[keep], self.source[keep], self.portrait[keep],
                            self.x_ref, self.z_ref, self.face)

    def inputs(self, idx) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(z, x_ref in [-1, 1], z_ref) of pairs `idx`, as `FastDecoder` takes them."""
        k = self.portrait[idx]
        return jnp.asarray(self.latents[idx]), _to_unit(self.x_ref[k]), jnp.asarray(self.z_ref[k])


@nnx.jit
def encode_mean(vae, x):
    """The VAE encoder's posterior mean of frames x (N, R, R, 3) in [-1, 1]: unscaled latents."""
    return vae.encode(x)[0]


def decoder_pairs(pipe, clips: int, *, split: str = "train", first: int = 0, frames: int = 16, noise: float = 0.2,
                  sampled: int = 0, data_seed: int = 0, seed: int = 0,
                  progress: Callable | None = None) -> DecoderPairs:
    """Pairs of latents and `pipe`'s full-decoder frames from clips `first ..` of `split` (see the
    module docstring): `clips` clips give clean and noisy pairs, `sampled` of them (the first)
    the pipeline's own sampled latents as well."""
    from emotivetalk_jax.data import face as facelib
    from emotivetalk_jax.data.synthetic import SAMPLES_PER_FRAME, SyntheticDomain, domain_config

    s, r = pipe.settings, pipe.resolution
    domain = SyntheticDomain(data_seed, domain_config(s.synthetic_head_motion, s.synthetic_moving_heads))
    rng = np.random.default_rng(seed)
    scale = pipe.latent_scale
    lat, img, src, who, x_refs, z_refs, faces = [], [], [], [], [], [], []
    recorded: list[np.ndarray] = []
    full_decode = pipe.decode

    def recording_decode(latents, reference=None):
        recorded.append(np.asarray(latents[0]) / scale)
        return full_decode(latents, reference)

    items = range(first, first + clips)
    for n, i in enumerate(progress(items) if progress else items):
        clip = domain.clip(i, split)
        portrait = clip.portrait(r)
        x_refs.append(portrait)
        z_refs.append(np.asarray(encode_mean(pipe.bundle.vae, _to_unit(portrait)[None]))[0])
        lm = clip.portrait_landmarks(r)
        faces.append(facelib.box_mask(facelib.face_box(lm), r, r)[..., 0])
        before = len(src)
        k = min(frames, clip.num_frames)
        start = int(rng.integers(0, clip.num_frames - k + 1))
        x = jnp.asarray(clip.frames(start, start + k, size=r).astype(np.float32) / 127.5 - 1.0)
        z = np.asarray(encode_mean(pipe.bundle.vae, x))
        z_noisy = z + rng.uniform(0, noise) * rng.standard_normal(z.shape).astype(np.float32)
        for kind, zz in (("clean", z), ("noisy", z_noisy)):
            lat.append(zz)
            img.append(pipe.decode(jnp.asarray(zz)[None] * scale))
            src += [kind] * len(zz)
        if n < sampled:
            pipe.decode = recording_decode
            try:
                res = pipe(portrait, clip.audio[: SAMPLED_FRAMES * SAMPLES_PER_FRAME], emotion=clip.emotion,
                           seed=seed + i, steps=SAMPLED_STEPS[n % len(SAMPLED_STEPS)], crop=False,
                           boxes=(facelib.lip_box(lm), facelib.face_box(lm), lm), mark=False)
            finally:
                del pipe.decode  # the class's method again
            lat.append(recorded.pop())
            img.append(res.frames)
            src += ["sampled"] * len(res.frames)
        who += [n] * (len(src) - before)
    return DecoderPairs(np.concatenate(lat).astype(np.float32), np.concatenate(img), np.asarray(src),
                        np.asarray(who, np.int32), np.stack(x_refs), np.stack(z_refs).astype(np.float32),
                        np.stack(faces).astype(np.float32))


# ----------------------------------------------------------------------------- training


def _to_unit(frames) -> jax.Array:
    return jnp.asarray(frames, jnp.float32) / 127.5 - 1.0


@nnx.jit
def _decode(model, z, x_ref, z_ref):
    return model(z, x_ref, z_ref)


def decoded_uint8(model: FastDecoder, pairs: DecoderPairs, batch: int = 64) -> np.ndarray:
    """The pairs' latents decoded -> (M, R, R, 3) uint8, `batch` frames a call."""
    out = []
    for i in range(0, len(pairs.latents), batch):
        x = np.asarray(_decode(model, *pairs.inputs(np.arange(i, min(i + batch, len(pairs.latents))))))
        out.append(np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8))
    return np.concatenate(out)


def psnr_to(model: FastDecoder, pairs: DecoderPairs) -> float:
    """Mean per-frame PSNR (dB) of the fast decoder's frames against the full decoder's."""
    from emotivetalk_jax.data.measure import psnr

    got = decoded_uint8(model, pairs)
    return float(np.mean([psnr(a, b) for a, b in zip(got, pairs.frames)]))


def make_train_step(face_weight: float = 1.0, edge_weight: float = 0.0):
    """(model, optimizer, z (B, h, w, L), x_ref (B, R, R, 3) in [-1, 1], z_ref (B, h, w, L), frames
    (B, R, R, 3) uint8, face (B, R, R) mask) -> the loss before the update: L1 weighted
    `face_weight` x inside the face, plus `edge_weight` x the same on image gradients (x_ref, z_ref
    unread by a decoder without `reference`)."""
    from emotivetalk_jax.train.stages.vae import edge_l1, reconstruction_l1

    @nnx.jit
    def step(model, optimizer, z, x_ref, z_ref, frames, face):
        target = _to_unit(frames)
        w = 1.0 + (face_weight - 1.0) * face[..., None]

        def loss_fn(m):
            rec = m(z, x_ref, z_ref)
            loss = reconstruction_l1(rec, target, w)
            return loss + edge_weight * edge_l1(rec, target, w) if edge_weight else loss

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    return step


def train_fast_decoder(train: DecoderPairs, cfg: FastDecoderConfig | None = None, *, steps: int = 4000,
                       batch: int = 32, learning_rate: float = 2e-3, weight_decay: float = 1e-4, seed: int = 0,
                       face_weight: float = 1.0, edge_weight: float = 0.0, eval_every: int = 0,
                       on_eval: Callable[[int, FastDecoder, float], None] | None = None) -> FastDecoder:
    """Fit a fast decoder to `train` pairs: AdamW, cosine schedule with warmup, random batches.
    `on_eval(step, model, recent_loss)` every `eval_every` steps and after the last."""
    cfg = cfg or FastDecoderConfig(latent_channels=train.latents.shape[-1])
    if len(train.latents) < 1:
        raise FastDecoderError("no training pairs")
    model = FastDecoder(cfg, rngs=nnx.Rngs(seed))
    sched = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(100, steps // 10 + 1), steps,
                                               learning_rate * 0.02)
    opt = nnx.Optimizer(model, optax.adamw(sched, weight_decay=weight_decay), wrt=nnx.Param)
    step = make_train_step(face_weight, edge_weight)
    rng = np.random.default_rng(seed)
    losses = []
    for i in range(1, steps + 1):
        idx = rng.integers(0, len(train.latents), min(batch, len(train.latents)))
        losses.append(step(model, opt, *train.inputs(idx), jnp.asarray(train.frames[idx]),
                           jnp.asarray(train.face[train.portrait[idx]])))
        if on_eval is not None and ((eval_every and i % eval_every == 0) or i == steps):
            on_eval(i, model, float(np.mean([float(v) for v in losses[-50:]])))
    return model


# ----------------------------------------------------------------------------- disk


def save_fast_decoder(model: FastDecoder, out: str | os.PathLike) -> Path:
    """`out/fast_decoder.safetensors` (parameters) + `out/fast_decoder.json` (config)."""
    from safetensors.numpy import save_file

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    tensors = {".".join(str(p) for p in path): np.asarray(v.value, np.float32) for path, v in flat}
    tmp = folder / "fast_decoder.safetensors.tmp"
    save_file(tensors, str(tmp))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, folder / "fast_decoder.safetensors")
    (folder / "fast_decoder.json").write_text(json.dumps({"config": dataclasses.asdict(model.cfg)}, indent=1) + "\n")
    return folder


def load_fast_decoder(path: str | os.PathLike) -> FastDecoder:
    """A decoder saved by `save_fast_decoder` (its folder, or a bundle holding fast_decoder/)."""
    from safetensors.numpy import load_file

    folder = Path(path)
    if (folder / "fast_decoder").is_dir():
        folder = folder / "fast_decoder"
    if not (folder / "fast_decoder.json").is_file() or not (folder / "fast_decoder.safetensors").is_file():
        raise FastDecoderError(f"no fast decoder at {path} (fast_decoder.json + fast_decoder.safetensors); train one "
                               "with `emotivetalk fast-decoder train OUT --checkpoint BUNDLE`")
    try:
        cfg = FastDecoderConfig(**json.loads((folder / "fast_decoder.json").read_text())["config"])
    except (ValueError, KeyError, TypeError) as e:
        raise FastDecoderError(f"{folder / 'fast_decoder.json'} is not a fast decoder config ({e})") from None
    from emotivetalk_jax.convert.engine import ConversionError, fill_from_arrays

    weights = folder / "fast_decoder.safetensors"
    try:
        return fill_from_arrays(nnx.eval_shape(lambda: FastDecoder(cfg, rngs=nnx.Rngs(0))), load_file(str(weights)),
                                str(weights))
    except ConversionError as e:
        raise FastDecoderError(f"{e}; re-save it") from None


__all__ = ["DecoderPairs", "FastDecoderError", "decoder_pairs", "train_fast_decoder", "save_fast_decoder",
           "load_fast_decoder", "decoded_uint8", "psnr_to", "make_train_step", "encode_mean"]
