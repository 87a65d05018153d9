"""`emotivetalk` command line: parse, check at the boundary (`validate`), call the package, print.

Contract: stdout carries the result only (JSON, or a path); progress, warnings and errors
go to stderr. A bad input is one `emotivetalk: error:` line and exit 2, with no output left
behind and no folder the command created; SIGINT / SIGTERM are one line and exit 130 / 143
(`interrupts`), temporary files removed on the way out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

_DTYPES = ("float32", "bfloat16", "float16")


class UsageError(ValueError):
    """A command line argparse refuses (printed as the CLI's one error line, exit 2)."""


class _Verdict(NamedTuple):
    """A result printed as is, with its own exit status (`detect`: 1 when a video is unmarked)."""

    text: str
    code: int


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors instead of usage + error."""

    def error(self, message: str):
        from emotivetalk_jax.validate import shorten_line

        raise UsageError(f"{shorten_line(message, 240)}; see `{self.prog} --help`")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="emotivetalk", description="EmotiveTalk in JAX: convert, check, generate.")
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
    dt = sub.add_parser("detect", help="which provenance marks videos carry: label, C2PA credential, watermark "
                                       "(JSON per video; exit 0 all marked, 1 one is not)")
    from emotivetalk_jax.provenance.detect import add_detect_arguments

    add_detect_arguments(dt)
    sv = sub.add_parser("serve", help="the web demo: a Gradio page and HTTP API over one loaded model (extra: web)")
    from emotivetalk_jax.web import add_serve_arguments

    add_serve_arguments(sv)
    b = sub.add_parser("bench-synthetic", help="lip sync / emotion / identity scores on held-out synthetic clips (JSON)")
    from emotivetalk_jax.eval.synthetic_bench import add_bench_arguments

    add_bench_arguments(b)
    b.add_argument("--verify", action="store_true", help="check every checkpoint file's sha256 before loading")
    ev = sub.add_parser("evaluate", help="FID, FVD, Sync-C/D, E-FID of generated vs reference videos (JSON)")
    from emotivetalk_jax.eval.evaluate import add_evaluate_arguments

    add_evaluate_arguments(ev)
    rb = sub.add_parser("random-bundle", help="write a random-weight pipeline checkpoint (for trying generate)")
    rb.add_argument("out")
    rb.add_argument("--variant", default="tiny")
    rb.add_argument("--seed", type=int, default=0)
    rb.add_argument("--resolution", type=int, default=None)
    rb.add_argument("--set", action="append", metavar="KEY=VALUE", help="a generation setting (window=16, steps=10, ...)")
    eb = sub.add_parser("export-bundle", help="pipeline checkpoint from a stage-2 (ethd) or student training workdir")
    eb.add_argument("ethd_workdir")
    eb.add_argument("out")
    eb.add_argument("--codebook", metavar="DIR", help="emotion codebook (default: built from synthetic training clips)")
    eb.add_argument("--resolution", type=int, default=None, help="default: the run's image size")
    eb.add_argument("--vae", metavar="WORKDIR", help="take the VAE decoder from this decoder fine-tune of stage 2's VAE")
    eb.add_argument("--vaid", metavar="WORKDIR", help="take Di-CTE from this Di-CTE retrain (vaid_train=dicte) of stage 2's V-AID")
    eb.add_argument("--set", action="append", metavar="KEY=VALUE", help="a generation setting (window=16, steps=10, ...)")
    eb.add_argument("--step", type=int, default=None, help="that checkpoint of the run (default: the latest)")

    from emotivetalk_jax.data.commands import add_data_commands
    from emotivetalk_jax.emotion.commands import add_emotion_commands

    from emotivetalk_jax.train.commands import add_train_command

    add_data_commands(sub)
    add_emotion_commands(sub)
    add_train_command(sub)
    from emotivetalk_jax.emotion.speech_train import add_speech_commands

    add_speech_commands(sub)
    from emotivetalk_jax.train.fast_decoder_command import add_fast_decoder_commands

    add_fast_decoder_commands(sub)
    return p


def _run(args: argparse.Namespace) -> object:
    from emotivetalk_jax.validate import check_command

    check_command(args)
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
    if args.command in ("train", "generate", "serve"):  # compile once per machine: before the first compile
        from emotivetalk_jax.accelerators import setup_compilation_cache

        setup_compilation_cache()
    if args.command == "train":
        from emotivetalk_jax.train.commands import run_train_command

        return run_train_command(args)
    if args.command in EMOTION_COMMANDS:
        return run_emotion_command(args)
    if args.command == "speech-head":
        from emotivetalk_jax.emotion.speech_train import run_speech_command

        return run_speech_command(args)
    if args.command == "fast-decoder":
        from emotivetalk_jax.train.fast_decoder_command import run_fast_decoder_command

        return run_fast_decoder_command(args)
    if args.command == "generate":
        from emotivetalk_jax.pipeline import generate_main

        return generate_main(args)
    if args.command == "detect":
        from emotivetalk_jax.provenance.detect import detect_main

        return _Verdict(*detect_main(args))
    if args.command == "serve":
        from emotivetalk_jax.web import serve_main

        return serve_main(args)
    if args.command == "bench-synthetic":
        from emotivetalk_jax.eval.synthetic_bench import bench_main

        if args.verify:
            from emotivetalk_jax.bundle import verify_bundle
            from emotivetalk_jax.pipeline import default_checkpoint

            ckpt = args.checkpoint or default_checkpoint()
            if ckpt is not None:
                verify_bundle(ckpt, hashes=True)
        return bench_main(args)
    if args.command == "evaluate":
        from emotivetalk_jax.eval.evaluate import evaluate

        return evaluate(args)
    if args.command == "random-bundle":
        from emotivetalk_jax.bundle import make_random_bundle, parse_settings

        return str(make_random_bundle(args.out, args.variant, args.seed, resolution=args.resolution,
                                      **parse_settings(args.set)))
    if args.command == "export-bundle":
        from emotivetalk_jax.bundle import bundle_from_training, parse_settings

        from emotivetalk_jax.bundle import verify_bundle

        out = bundle_from_training(args.out, args.ethd_workdir, codebook=args.codebook, resolution=args.resolution,
                                   vae=args.vae, vaid=args.vaid, step=args.step, **parse_settings(args.set))
        verify_bundle(out, hashes=True)  # the bundle as written, read back against its manifest
        return str(out)
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


def _outputs(args: argparse.Namespace):
    """The output paths this command may create (removed again if it fails), and which of them
    hold resumable work that a failure or an interrupt must not remove."""
    from emotivetalk_jax.interrupts import Outputs

    cmd = args.command
    paths = {"convert": "out", "random-svd": "out", "random-bundle": "out", "export-bundle": "out",
             "codebook": "out", "prepare": "out_dir", "synth": "out_dir", "train": "workdir",
             "speech-head": "out", "fast-decoder": "out"}
    if cmd == "generate":
        return Outputs([Path(args.out).parent])
    attr = paths.get(cmd)
    if attr is None or getattr(args, attr, None) is None:
        return Outputs([])

    def resumable(path: Path) -> bool:
        if cmd == "train":
            return any(p.name.isdigit() for p in (path / "checkpoints").glob("*"))
        if cmd == "prepare":
            return any((path / ".work").glob("*.npz"))
        return False

    return Outputs([getattr(args, attr)], keep=resumable)


def _one_line(e: BaseException) -> str:
    """The error as one line of at most `validate.LINE_CHARS` characters."""
    from emotivetalk_jax.validate import LINE_CHARS, shorten_line

    if isinstance(e, OSError) and e.strerror and e.filename:
        return shorten_line(f"{e.filename}: {e.strerror}", LINE_CHARS - len("emotivetalk: error: "))
    text = " ".join(line.strip() for line in str(e).strip().splitlines() if line.strip())
    return shorten_line(text, LINE_CHARS - len("emotivetalk: error: ")) or type(e).__name__


@contextmanager
def _warnings_to_stderr():
    """Each distinct `InputWarning` as one `emotivetalk: warning:` line on stderr."""
    from emotivetalk_jax.validate import InputWarning

    seen: set[str] = set()
    with warnings.catch_warnings():
        original = warnings.showwarning
        warnings.simplefilter("always", InputWarning)

        def show(message, category, filename, lineno, file=None, line=None):
            if not issubclass(category, InputWarning):
                return original(message, category, filename, lineno, file, line)
            if str(message) not in seen:
                seen.add(str(message))
                print(f"emotivetalk: warning: {message}", file=sys.stderr)

        warnings.showwarning = show
        yield


def _errors() -> tuple[type[BaseException], ...]:
    from emotivetalk_jax.convert.engine import ConversionError

    return ConversionError, ValueError, OSError


def _interrupted_line(name: str, outputs) -> str:
    removed = outputs.remove_created() if outputs is not None else []
    kept = [str(p) for _, p in (outputs.items if outputs is not None else []) if outputs.keep(p)]
    tail = (f"; finished work is kept in {', '.join(kept)}: run the same command to resume" if kept
            else "; removed the partial output" if removed else "")
    return f"emotivetalk: interrupted by {name}{tail}"


def _leave(code: int, program: bool) -> int:
    """The exit code; run as the program, an interrupted command leaves without interpreter
    teardown, which can crash while JAX's threads are still mid-computation."""
    if program and code >= 128:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv: list[str] | None = None) -> int:
    from emotivetalk_jax import interrupts

    program = argv is None
    outputs = None

    def last_words(signum: int) -> None:  # the main thread is stuck in C (an XLA compile): leave from here
        print(_interrupted_line(interrupts.Interrupted(signum).name, outputs), file=sys.stderr, flush=True)

    with interrupts.handle_signals(on_stuck=last_words if program else None), _warnings_to_stderr():
        try:
            args = _parser().parse_args(argv)
            outputs = _outputs(args)
            result = _run(args)
        except KeyboardInterrupt as e:
            interrupts.mark_handled()
            name = e.name if isinstance(e, interrupts.Interrupted) else "SIGINT"
            print(_interrupted_line(name, outputs), file=sys.stderr)
            return _leave(e.exit_code if isinstance(e, interrupts.Interrupted) else 130, program)
        except _errors() as e:
            interrupts.mark_handled()
            if outputs is not None:
                outputs.remove_created()
            print(f"emotivetalk: error: {_one_line(e)}", file=sys.stderr)
            return 2
        if isinstance(result, _Verdict):
            print(result.text)
            return result.code
        print(json.dumps(result, indent=2) if not isinstance(result, str) else result)
        if args.command == "train" and isinstance(result, dict) and result.get("status") == "preempted":
            print(f"emotivetalk: stopped by SIGTERM after saving step {result.get('step')} in {args.workdir}; "
                  "run the same command to resume", file=sys.stderr)
            return _leave(143, program)
        held = interrupts.received()
        if held is not None:  # arrived too late to stop the work: the result stands
            interrupts.mark_handled()
            name = interrupts.Interrupted(held).name
            print(f"emotivetalk: interrupted by {name} after the work was done", file=sys.stderr)
            return _leave(128 + held, program)
        return 0


if __name__ == "__main__":
    sys.exit(main())
