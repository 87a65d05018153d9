"""`emotivetalk synth` and `emotivetalk prepare`: argparse wiring for cli.py.

    from emotivetalk_jax.data.commands import add_data_commands, run_data_command
    add_data_commands(subparsers)            # in _parser()
    if args.command in DATA_COMMANDS: return run_data_command(args)   # in _run()

Errors are exceptions with one-line messages (ValueError / FileNotFoundError /
FileExistsError, `validate`'s checks); cli.py prints `emotivetalk: error: ...` and exits 2.
Both commands print only their JSON summary on stdout; progress and skip lines go to stderr.
"""

from __future__ import annotations

import argparse

DATA_COMMANDS = ("synth", "prepare")


def _face_box(text: str) -> tuple[float, float, float, float]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4:
        raise argparse.ArgumentTypeError(f"expected X0,Y0,X1,Y1 in pixels, got {text!r}")
    return vals  # type: ignore[return-value]


def add_data_commands(sub) -> None:
    s = sub.add_parser("synth", help="write synthetic talking-face clips (mp4 + png + wav + ground-truth json)")
    s.add_argument("out_dir")
    s.add_argument("--clips", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=64, help="frame side in pixels (even, e.g. 64..512)")
    s.add_argument("--split", default="train", choices=("train", "test", "test_seen"),
                   help="test = held-out identities and utterances; test_seen = held-out utterances only")
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--head-motion", type=float, default=1.0, help="difficulty: head motion scale (0 = still)")
    s.add_argument("--moving-heads", action="store_true",
                   help="head motion a 64 px frame shows, each clip at its own level (synthetic.MOVING_HEADS)")
    s.add_argument("--min-seconds", type=float, default=2.0)
    s.add_argument("--max-seconds", type=float, default=4.0)

    p = sub.add_parser("prepare", help="prepare a folder of talking-face videos (HDTF / MEAD) as a tfds dataset")
    p.add_argument("video_dir")
    p.add_argument("out_dir")
    p.add_argument("--size", type=int, default=256, help="output frame side in pixels")
    p.add_argument("--min-frames", type=int, default=25, help="skip clips shorter than this (MEAD in the paper: 120)")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--crop-scale", type=float, default=1.8, help="crop side / face box side")
    p.add_argument("--split-by", choices=("clip", "speaker"), default="clip")
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--audio-features", choices=("mel",), default=None, help="also store 80-bin log-mel at 100 Hz")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")


def run_data_command(args: argparse.Namespace) -> object:
    from emotivetalk_jax import validate as V

    if args.command == "synth":
        from emotivetalk_jax.data.synthetic import domain_config, synth_main

        V.check_output_folder(args.out_dir, "output folder")
        V.check_seed(args.seed)
        V.check_int(args.clips, "--clips", 1, 1_000_000)
        V.check_int(args.workers, "--workers", 1, 256)
        V.check_float(args.head_motion, "--head-motion", 0.0, 10.0)
        lo = V.check_float(args.min_seconds, "--min-seconds", 0.0, 600.0, lo_open=True)
        V.check_float(args.max_seconds, "--max-seconds", lo, 600.0)
        cfg = domain_config(args.head_motion, getattr(args, "moving_heads", False), min_seconds=args.min_seconds,
                            max_seconds=args.max_seconds)
        return synth_main(args.out_dir, args.clips, args.seed, args.size, split=args.split, workers=args.workers,
                          config=cfg)
    if args.command == "prepare":
        from emotivetalk_jax.data.prepare import PrepareConfig, prepare_main

        cfg = PrepareConfig(size=args.size, min_frames=args.min_frames, max_frames=args.max_frames,
                            crop_scale=args.crop_scale, split_by=args.split_by, test_fraction=args.test_fraction,
                            audio_features=args.audio_features)
        rep = prepare_main(args.video_dir, args.out_dir, cfg, workers=args.workers, progress=not args.no_progress)
        return {"dataset": rep["dataset"], "counts": rep["counts"], "newly_prepared": len(rep["newly_prepared"]),
                "reused": len(rep["reused"]), "rebuilt": rep["rebuilt"], "skipped": rep["skipped"]}
    raise ValueError(f"not a data command: {args.command}")


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (until cli.py wires these in): python -m emotivetalk_jax.data.commands ..."""
    import json
    import sys

    ap = argparse.ArgumentParser(prog="emotivetalk")
    add_data_commands(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    try:
        out = run_data_command(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"emotivetalk: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
