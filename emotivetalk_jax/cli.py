"""`emotivetalk` command line: parse, call the package, print. No logic lives here."""

from __future__ import annotations

import argparse
import json
import sys

_DTYPES = ("float32", "bfloat16", "float16")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emotivetalk", description="EmotiveTalk in JAX: convert, check, generate.")
    sub = p.add_subparsers(dest="command", required=True)

    conv = sub.add_parser("convert", help="convert PyTorch checkpoints to emotivetalk_jax (orbax) and back")
    csub = conv.add_subparsers(dest="what", required=True)
    c = csub.add_parser("svd", help="diffusers SVD folder (repo root with unet/ vae/, or one component) -> orbax")
    c.add_argument("src")
    c.add_argument("out")
    c.add_argument("--dtype", choices=_DTYPES, default=None, help="cast parameters (default: keep)")
    a = csub.add_parser("audio", help="Hugging Face Wav2Vec2 / WavLM folder -> orbax")
    a.add_argument("src")
    a.add_argument("out")
    a.add_argument("--dtype", choices=_DTYPES, default=None, help="cast parameters (default: keep)")
    e = csub.add_parser("export", help="orbax checkpoint -> diffusers / Hugging Face safetensors folder")
    e.add_argument("ckpt")
    e.add_argument("out")

    r = sub.add_parser("random-svd", help="write a random-weight SVD in diffusers format (for trying the tools)")
    r.add_argument("out")
    r.add_argument("--variant", default="tiny")
    r.add_argument("--seed", type=int, default=0)

    f = sub.add_parser("forward", help="one UNet forward + VAE decode on a converted SVD checkpoint")
    f.add_argument("ckpt")
    f.add_argument("--frames", type=int, default=None)
    f.add_argument("--seed", type=int, default=0)

    i = sub.add_parser("info", help="parameter counts per component of a variant (abstract, nothing allocated)")
    i.add_argument("--variant", default="emotivetalk_512")

    g = sub.add_parser("generate", help="portrait + speech (+ emotion) -> talking-head mp4")
    from emotivetalk_jax.pipeline import add_generate_arguments

    add_generate_arguments(g)
    b = sub.add_parser("bench-synthetic", help="lip sync / emotion / identity scores on held-out synthetic clips (JSON)")
    from emotivetalk_jax.eval.synthetic_bench import add_bench_arguments

    add_bench_arguments(b)
    rb = sub.add_parser("random-bundle", help="write a random-weight pipeline checkpoint (for trying generate)")
    rb.add_argument("out")
    rb.add_argument("--variant", default="tiny")
    rb.add_argument("--seed", type=int, default=0)
    rb.add_argument("--resolution", type=int, default=None)
    rb.add_argument("--set", action="append", metavar="KEY=VALUE", help="a generation setting (window=16, steps=10, ...)")
    eb = sub.add_parser("export-bundle", help="pipeline checkpoint from a stage-2 (ethd) training workdir")
    eb.add_argument("ethd_workdir")
    eb.add_argument("out")
    eb.add_argument("--codebook", metavar="DIR", help="emotion codebook (default: built from synthetic training clips)")
    eb.add_argument("--resolution", type=int, default=None, help="default: the run's image size")
    eb.add_argument("--vae", metavar="WORKDIR", help="take the VAE decoder from this decoder fine-tune of stage 2's VAE")
    eb.add_argument("--set", action="append", metavar="KEY=VALUE", help="a generation setting (window=16, steps=10, ...)")

    from emotivetalk_jax.data.commands import add_data_commands
    from emotivetalk_jax.emotion.commands import add_emotion_commands

    from emotivetalk_jax.train.commands import add_train_command

    add_data_commands(sub)
    add_emotion_commands(sub)
    add_train_command(sub)
    return p


def _run(args: argparse.Namespace) -> object:
    if args.command == "convert":
        from emotivetalk_jax import convert

        import jax.numpy as jnp

        dtype = getattr(jnp, args.dtype) if getattr(args, "dtype", None) else None
        if args.what == "svd":
            return {k: str(v) for k, v in convert.convert_svd(args.src, args.out, dtype=dtype).items()}
        if args.what == "audio":
            return {"audio": str(convert.convert_audio(args.src, args.out, dtype=dtype))}
        return {k: str(v) for k, v in convert.export_native(args.ckpt, args.out).items()}
    from emotivetalk_jax.data.commands import DATA_COMMANDS, run_data_command
    from emotivetalk_jax.emotion.commands import EMOTION_COMMANDS, run_emotion_command

    if args.command in DATA_COMMANDS:
        return run_data_command(args)
    if args.command == "train":
        from emotivetalk_jax.train.commands import run_train_command

        return run_train_command(args)
    if args.command in EMOTION_COMMANDS:
        return run_emotion_command(args)
    if args.command == "generate":
        from emotivetalk_jax.pipeline import generate_main

        return generate_main(args)
    if args.command == "bench-synthetic":
        from emotivetalk_jax.eval.synthetic_bench import bench_main

        return bench_main(args)
    if args.command == "random-bundle":
        from emotivetalk_jax.bundle import make_random_bundle, parse_settings

        return str(make_random_bundle(args.out, args.variant, args.seed, resolution=args.resolution,
                                      **parse_settings(args.set)))
    if args.command == "export-bundle":
        from emotivetalk_jax.bundle import bundle_from_training, parse_settings

        return str(bundle_from_training(args.out, args.ethd_workdir, codebook=args.codebook,
                                        resolution=args.resolution, vae=args.vae,
                                        **parse_settings(args.set)))
    if args.command == "random-svd":
        from emotivetalk_jax.smoke import write_random_svd

        return str(write_random_svd(args.out, args.variant, args.seed))
    if args.command == "info":
        from emotivetalk_jax.info import info_main

        return info_main(args.variant)
    if args.command == "forward":
        from emotivetalk_jax.smoke import forward_once

        return forward_once(args.ckpt, frames=args.frames, seed=args.seed)
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from emotivetalk_jax.convert.engine import ConversionError

    try:
        result = _run(args)
    except (ConversionError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"emotivetalk: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if not isinstance(result, str) else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
