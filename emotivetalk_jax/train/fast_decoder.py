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

Validation: the same sources from test-split clips `VAL_FIRST ..` (held-out identities, clear
of the clips `bench-synthetic` scores, 0-31). The decoder trains full-batch-in-memory with AdamW
and an L1 loss on pixels in [-1, 1]; its PSNR against the full decoder on the validation pairs
is logged every `eval_every` steps (`OUT/report.json`). The result is saved as
`fast_decoder.safetensors` + `fast_decoder.json` (no pickle) and put into a bundle as
`fast_decoder/` by `add` (`bundle.add_fast_decoder`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from emotivetalk_jax.models.fast_decoder import FastDecoder, FastDecoderConfig, conv_flops

FAST_DECODER_COMMANDS = ("fast-decoder",)
VAL_FIRST = 64  # validation clips: test-split clips from here (bench-synthetic scores 0..31)
SAMPLED_STEPS = (1, 2)
SAMPLED_FRAMES = 48  # every clip of the domain is longer (2 s at least)


class FastDecoderError(ValueError):
    """A fast decoder that cannot be trained, loaded or used; the message says why, in one line."""


@dataclasses.dataclass
class DecoderPairs:
    """Latents (M, h, w, L) unscaled, the full decoder's frames (M, R, R, 3) uint8, and the source of each."""

    latents: np.ndarray
    frames: np.ndarray
    source: np.ndarray  # (M,) "clean" | "noisy" | "sampled"

    def subset(self, kind: str) -> "DecoderPairs":
        keep = self.source == kind
        return DecoderPairs(self.latents[keep], self.frames[keep], self.source[keep])


@nnx.jit
def _encode_mean(vae, x):
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
    lat, img, src = [], [], []
    recorded: list[np.ndarray] = []
    full_decode = pipe.decode

    def recording_decode(latents):
        recorded.append(np.asarray(latents[0]) / scale)
        return full_decode(latents)

    items = range(first, first + clips)
    for n, i in enumerate(progress(items) if progress else items):
        clip = domain.clip(i, split)
        k = min(frames, clip.num_frames)
        start = int(rng.integers(0, clip.num_frames - k + 1))
        x = jnp.asarray(clip.frames(start, start + k, size=r).astype(np.float32) / 127.5 - 1.0)
        z = np.asarray(_encode_mean(pipe.bundle.vae, x))
        z_noisy = z + rng.uniform(0, noise) * rng.standard_normal(z.shape).astype(np.float32)
        for kind, zz in (("clean", z), ("noisy", z_noisy)):
            lat.append(zz)
            img.append(pipe.decode(jnp.asarray(zz)[None] * scale))
            src += [kind] * len(zz)
        if n < sampled:
            lm = clip.portrait_landmarks(r)
            pipe.decode = recording_decode
            try:
                res = pipe(clip.portrait(r), clip.audio[: SAMPLED_FRAMES * SAMPLES_PER_FRAME], emotion=clip.emotion,
                           seed=seed + i, steps=SAMPLED_STEPS[n % len(SAMPLED_STEPS)], crop=False,
                           boxes=(facelib.lip_box(lm), facelib.face_box(lm)), mark=False)
            finally:
                del pipe.decode  # the class's method again
            lat.append(recorded.pop())
            img.append(res.frames)
            src += ["sampled"] * len(res.frames)
    return DecoderPairs(np.concatenate(lat).astype(np.float32), np.concatenate(img), np.asarray(src))


# ----------------------------------------------------------------------------- training


def _to_unit(frames) -> jax.Array:
    return jnp.asarray(frames, jnp.float32) / 127.5 - 1.0


@nnx.jit
def _decode(model, z):
    return model(z)


def decoded_uint8(model: FastDecoder, latents: np.ndarray, batch: int = 64) -> np.ndarray:
    """(M, h, w, L) unscaled latents -> (M, R, R, 3) uint8, `batch` frames a call."""
    out = []
    for i in range(0, len(latents), batch):
        x = np.asarray(_decode(model, jnp.asarray(latents[i:i + batch])))
        out.append(np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8))
    return np.concatenate(out)


def psnr_to(model: FastDecoder, pairs: DecoderPairs) -> float:
    """Mean per-frame PSNR (dB) of the fast decoder's frames against the full decoder's."""
    from emotivetalk_jax.data.measure import psnr

    got = decoded_uint8(model, pairs.latents)
    return float(np.mean([psnr(a, b) for a, b in zip(got, pairs.frames)]))


def make_train_step():
    """(model, optimizer, z (B, h, w, L), frames (B, R, R, 3) uint8) -> L1 loss before the update."""

    @nnx.jit
    def step(model, optimizer, z, frames):
        target = _to_unit(frames)

        def loss_fn(m):
            return jnp.abs(m(z) - target).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    return step


def train_fast_decoder(train: DecoderPairs, cfg: FastDecoderConfig | None = None, *, steps: int = 4000,
                       batch: int = 32, learning_rate: float = 2e-3, weight_decay: float = 1e-4, seed: int = 0,
                       eval_every: int = 0,
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
    step = make_train_step()
    rng = np.random.default_rng(seed)
    losses = []
    for i in range(1, steps + 1):
        idx = rng.integers(0, len(train.latents), min(batch, len(train.latents)))
        losses.append(step(model, opt, jnp.asarray(train.latents[idx]), jnp.asarray(train.frames[idx])))
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
    model = nnx.eval_shape(lambda: FastDecoder(cfg, rngs=nnx.Rngs(0)))
    tensors = load_file(str(folder / "fast_decoder.safetensors"))
    graphdef, state = nnx.split(model)
    flat = []
    for p, var in nnx.to_flat_state(state):
        key = ".".join(str(q) for q in p)
        if key not in tensors or tuple(tensors[key].shape) != tuple(var.shape):
            raise FastDecoderError(f"{folder / 'fast_decoder.safetensors'} lacks {key} {tuple(var.shape)}; re-save it")
        flat.append((p, var.replace(jnp.asarray(tensors[key]))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


# ----------------------------------------------------------------------------- command line


def add_fast_decoder_commands(sub) -> None:
    f = sub.add_parser("fast-decoder", help="a small frame-wise VAE decoder distilled from a checkpoint's "
                                            "(generate --fast-decode)")
    fsub = f.add_subparsers(dest="fast_command", required=True)
    t = fsub.add_parser("train", help="distil a checkpoint's VAE decoder (PSNR against it in OUT/report.json)")
    t.add_argument("out")
    t.add_argument("--checkpoint", metavar="DIR",
                   help="pipeline checkpoint whose decoder to distil (default: the demo)")
    t.add_argument("--clips", type=int, default=96, help="training clips (clean and noisy latents of each)")
    t.add_argument("--frames", type=int, default=16, help="consecutive frames per clip")
    t.add_argument("--sampled", type=int, default=32, help="of those clips, how many also give the sampler's latents")
    t.add_argument("--noise", type=float, default=0.2, help="largest sigma of the noise added to the noisy latents")
    t.add_argument("--val-clips", type=int, default=8, help=f"validation clips (test split, from clip {VAL_FIRST})")
    t.add_argument("--widths", default="64,32,16", help="channels per level, coarsest first")
    t.add_argument("--steps", type=int, default=4000)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--eval-every", type=int, default=500)
    t.add_argument("--data-seed", type=int, default=0, help="the synthetic domain (the checkpoint's training data's)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    a = fsub.add_parser("add", help="put a fast decoder into a pipeline checkpoint (fast_decoder/, manifest rewritten)")
    a.add_argument("decoder")
    a.add_argument("bundle")
    a.add_argument("--replace", action="store_true", help="replace a fast decoder the checkpoint already has")


def _parse_widths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise FastDecoderError(f"--widths {text!r}: expected comma-separated channel counts, e.g. 64,32,16") from None


def _pairs(pipe, args, cache: Path, progress) -> tuple[DecoderPairs, DecoderPairs]:
    """Training and validation pairs, read from `cache` when it exists (else made and written there)."""
    if cache.is_file():
        with np.load(cache) as z:
            return tuple(DecoderPairs(z[f"{k}_latents"], z[f"{k}_frames"], z[f"{k}_source"]) for k in ("train", "val"))
    train = decoder_pairs(pipe, args.clips, frames=args.frames, noise=args.noise, sampled=args.sampled,
                          data_seed=args.data_seed, seed=args.seed, progress=progress)
    val = decoder_pairs(pipe, args.val_clips, split="test", first=VAL_FIRST, frames=args.frames, noise=args.noise,
                        sampled=args.val_clips, data_seed=args.data_seed, seed=args.seed + 1, progress=progress)
    np.savez(cache, **{f"{k}_{f}": getattr(p, f) for k, p in (("train", train), ("val", val))
                       for f in ("latents", "frames", "source")})
    return train, val


def run_fast_decoder_command(args) -> dict:
    from emotivetalk_jax import validate
    from emotivetalk_jax.bundle import add_fast_decoder, vae_factor
    from emotivetalk_jax.pipeline import EmotiveTalkPipeline, default_checkpoint

    if args.fast_command == "add":
        validate.check_folder(args.decoder, "decoder", error=FastDecoderError)
        return {"bundle": str(add_fast_decoder(args.bundle, load_fast_decoder(args.decoder), replace=args.replace))}
    validate.check_output_folder(args.out, "output folder", error=FastDecoderError)
    for name, lo in (("clips", 1), ("frames", 1), ("sampled", 0), ("val_clips", 1), ("steps", 1), ("batch", 1),
                     ("eval_every", 1)):
        validate.check_int(getattr(args, name), f"--{name.replace('_', '-')}", lo, 1_000_000, error=FastDecoderError)
    validate.check_float(args.noise, "--noise", 0.0, 10.0, error=FastDecoderError)
    validate.check_float(args.lr, "--lr", 0.0, 1.0, lo_open=True, error=FastDecoderError)
    validate.check_seed(args.data_seed, "--data-seed")
    validate.check_seed(args.seed)
    ckpt = args.checkpoint or default_checkpoint()
    if ckpt is None:
        raise FastDecoderError("no --checkpoint given and no demo checkpoint installed; pass --checkpoint DIR")
    pipe = EmotiveTalkPipeline.from_pretrained(ckpt, progress=False, precision="float32")
    cfg = FastDecoderConfig(latent_channels=int(pipe.bundle.vae.config["latent_channels"]),
                            widths=_parse_widths(args.widths))
    if cfg.factor != vae_factor(pipe.bundle.vae):
        raise FastDecoderError(f"--widths {args.widths} has {len(cfg.widths)} levels; the checkpoint's VAE has "
                               f"{len(pipe.bundle.vae.config['block_out_channels'])}")
    key = json.dumps([str(Path(ckpt).resolve()), args.clips, args.frames, args.sampled, args.noise, args.val_clips,
                      args.data_seed, args.seed])
    Path(args.out).mkdir(parents=True, exist_ok=True)
    cache = Path(args.out) / f".pairs-{zlib.crc32(key.encode()):08x}.npz"  # reruns with other training settings reuse it
    from tqdm import tqdm

    bar = None if args.quiet else (lambda items: tqdm(items, desc="decoder pairs", unit="clip"))
    t0 = time.perf_counter()
    train, val = _pairs(pipe, args, cache, bar)
    data_s = time.perf_counter() - t0
    report = {"checkpoint": str(ckpt), "config": dataclasses.asdict(cfg),
              "gflop_per_frame": conv_flops(cfg, pipe.latent_size) / 1e9,
              "train_pairs": {k: int((train.source == k).sum()) for k in ("clean", "noisy", "sampled")},
              "val_pairs": {k: int((val.source == k).sum()) for k in ("clean", "noisy", "sampled")},
              "validation": f"test clips {VAL_FIRST}..{VAL_FIRST + args.val_clips - 1}, PSNR (dB) against the "
                            "checkpoint's full decoder", "history": [], "steps": args.steps,
              "batch": args.batch, "lr": args.lr, "noise": args.noise, "seed": args.seed,
              "data_seconds": round(data_s, 1)}
    t0 = time.perf_counter()

    def on_eval(step: int, model, loss: float) -> None:
        """Score on the validation pairs; the decoder and report as they stand are saved each time."""
        row = {"step": step, "train_l1": round(loss, 5),
               **{f"val_psnr_{k}": round(psnr_to(model, val.subset(k)), 3) for k in ("clean", "noisy", "sampled")}}
        report["history"].append(row)
        report["train_seconds"] = round(time.perf_counter() - t0, 1)
        save_fast_decoder(model, args.out)  # a failure removes the folder (cli.py's outputs)
        (Path(args.out) / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        if not args.quiet:
            print(json.dumps(row), file=sys.stderr, flush=True)

    train_fast_decoder(train, cfg, steps=args.steps, batch=args.batch, learning_rate=args.lr, seed=args.seed,
                       eval_every=args.eval_every, on_eval=on_eval)
    return {"decoder": str(args.out), **report["history"][-1], "gflop_per_frame": round(report["gflop_per_frame"], 3)}


__all__ = ["DecoderPairs", "FastDecoderError", "decoder_pairs", "train_fast_decoder", "save_fast_decoder",
           "load_fast_decoder", "decoded_uint8", "psnr_to", "make_train_step"]
