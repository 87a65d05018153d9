"""`emotivetalk fast-decoder train | add` (`train.fast_decoder` trains and stores the decoder): the
command line, which runs the pipeline to make its pairs and edits bundles, so it sits above them
in the layer order (tests/test_layering.py), as `emotion.speech_train` does for the speech head."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from emotivetalk_jax.models.fast_decoder import FastDecoderConfig, conv_flops
from emotivetalk_jax.train.fast_decoder import (VAL_FIRST, DecoderPairs, FastDecoderError, decoder_pairs,
                                                load_fast_decoder, psnr_to, save_fast_decoder, train_fast_decoder)


def add_fast_decoder_commands(sub) -> None:
    f = sub.add_parser("fast-decoder", help="a small frame-wise VAE decoder distilled from a checkpoint's "
                                            "(generate --fast-decode)")
    fsub = f.add_subparsers(dest="fast_command", required=True)
    t = fsub.add_parser("train", help="distil a checkpoint's VAE decoder (PSNR against it in OUT/report.json)")
    t.add_argument("out")
    t.add_argument("--checkpoint", metavar="DIR",
                   help="pipeline checkpoint whose decoder to distil (default: the demo)")
    t.add_argument("--clips", type=int, default=768,
                   help="training clips (clean and noisy latents of each; 96 overfit their identities)")
    t.add_argument("--frames", type=int, default=8, help="consecutive frames per clip")
    t.add_argument("--sampled", type=int, default=96, help="of those clips, how many also give the sampler's latents")
    t.add_argument("--noise", type=float, default=0.2, help="largest sigma of the noise added to the noisy latents")
    t.add_argument("--val-clips", type=int, default=8, help=f"validation clips (test split, from clip {VAL_FIRST})")
    t.add_argument("--widths", default="64,32,16", help="channels per level, coarsest first")
    t.add_argument("--no-reference", action="store_true",
                   help="a decoder that does not read the portrait (several dB further from the full decoder)")
    t.add_argument("--steps", type=int, default=4000)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--face-weight", type=float, default=1.0, help="weight of the L1 inside the portrait's face box")
    t.add_argument("--edge-weight", type=float, default=0.0,
                   help="weight of the L1 on image gradients (the expression's lines)")
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
            return tuple(DecoderPairs(*(z[f"{k}_{f}"] for f in DecoderPairs.FIELDS)) for k in ("train", "val"))
    train = decoder_pairs(pipe, args.clips, frames=args.frames, noise=args.noise, sampled=args.sampled,
                          data_seed=args.data_seed, seed=args.seed, progress=progress)
    val = decoder_pairs(pipe, args.val_clips, split="test", first=VAL_FIRST, frames=args.frames, noise=args.noise,
                        sampled=args.val_clips, data_seed=args.data_seed, seed=args.seed + 1, progress=progress)
    np.savez(cache, **{f"{k}_{f}": getattr(p, f) for k, p in (("train", train), ("val", val))
                       for f in DecoderPairs.FIELDS})
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
    validate.check_float(args.face_weight, "--face-weight", 0.0, 1000.0, lo_open=True, error=FastDecoderError)
    validate.check_float(args.edge_weight, "--edge-weight", 0.0, 1000.0, error=FastDecoderError)
    validate.check_seed(args.data_seed, "--data-seed")
    validate.check_seed(args.seed)
    ckpt = args.checkpoint or default_checkpoint()
    if ckpt is None:
        raise FastDecoderError("no --checkpoint given and no demo checkpoint installed; pass --checkpoint DIR")
    pipe = EmotiveTalkPipeline.from_pretrained(ckpt, progress=False, precision="float32")
    cfg = FastDecoderConfig(latent_channels=int(pipe.bundle.vae.config["latent_channels"]),
                            widths=_parse_widths(args.widths), reference=not args.no_reference)
    if cfg.factor != vae_factor(pipe.bundle.vae):
        raise FastDecoderError(f"--widths {args.widths} has {len(cfg.widths)} levels; the checkpoint's VAE has "
                               f"{len(pipe.bundle.vae.config['block_out_channels'])}")
    key = json.dumps(["pairs with portraits and face boxes", str(Path(ckpt).resolve()), args.clips, args.frames,
                      args.sampled, args.noise, args.val_clips,
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
              "batch": args.batch, "lr": args.lr, "face_weight": args.face_weight, "edge_weight": args.edge_weight,
              "noise": args.noise, "seed": args.seed,
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
                       face_weight=args.face_weight, edge_weight=args.edge_weight, eval_every=args.eval_every,
                       on_eval=on_eval)
    return {"decoder": str(args.out), **report["history"][-1], "gflop_per_frame": round(report["gflop_per_frame"], 3)}


__all__ = ["add_fast_decoder_commands", "run_fast_decoder_command"]
