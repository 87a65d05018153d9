"""`emotivetalk train`: `--config configs/train.py:stage=ethd,variant=tiny --workdir DIR [--config.x=y ...]`.

`add_train_command(subparsers)` registers it; `run_train_command(args)` runs it. Overrides
are applied by ml_collections' `config_flags` (each value parsed as its field's type),
`--config.optim.lr=3e-5`, `--config.mesh="[('data',-1),('fsdp',8),('tensor',1)]"`; an unknown
field or a mistyped value fails in one line naming the valid keys or the wanted type.
The same from Python:
`train_from_args(["--config", "configs/train.py:stage=ethd", "--workdir", "w", "--config.seed=1"])`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]


class _TrainParser(argparse.ArgumentParser):
    """Keeps `--config.x=y` items for ml_collections instead of rejecting them."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        overrides = [a for a in args if a.startswith("--config.")]
        ns, extra = super().parse_known_args([a for a in args if not a.startswith("--config.")], namespace)
        ns.overrides = list(getattr(ns, "overrides", None) or []) + overrides
        return ns, extra


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True,
                   help="config file and argument, e.g. configs/train.py:stage=ethd,variant=tiny")
    p.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, tensorboard/ and samples/")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--attention", choices=("auto", "xla", "cudnn", "pallas"), default=None,
                   help="attention kernels (overrides --config.attention; auto = cuDNN flash on NVIDIA, "
                        "Pallas flash on TPU, XLA otherwise)")


def add_train_command(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train a stage (encoders | vaid | ethd | vae); resumes from WORKDIR",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    base = type(p)  # keep the CLI parser's behaviour (one-line errors) under the override handling
    p.__class__ = _TrainParser if issubclass(_TrainParser, base) else type("TrainParser", (_TrainParser, base), {})
    _add_arguments(p)
    return p


def resolve_config_path(spec: str) -> str:
    """`path[:arg]` with `path` relative to the cwd, or else to the repository root."""
    path, sep, arg = spec.partition(":")
    if not Path(path).exists() and (_REPO / path).exists():
        path = str(_REPO / path)
    return path + sep + arg


def _unknown_field(config, key: str) -> str | None:
    """The one-line message for an override `key` that names no field of `config`, else None."""
    node, where = config, "config"
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
            valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "none (not a ConfigDict)"
            return f"--config.{key}: {where} has no field {part!r}; valid keys: {valid}"
        node, where = node[part], f"{where}.{part}"
    return None


def apply_overrides(cfg, overrides: list[str]):
    """`--config.a.b=value` items applied by ml_collections' `config_flags` (each value parsed as
    the field's type; a ConfigDict field takes a dict literal, a tuple field a list or tuple), on a
    private absl FlagValues (no absl app globals). An unknown field or a value of the wrong type
    fails in one line: ValueError naming the valid keys, or the field and the type it wanted."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["emotivetalk train", *overrides]
    for item in overrides:
        if not item.startswith("--config.") or "=" not in item:
            raise ValueError(f"override {item!r} must be --config.field=value")
        message = _unknown_field(cfg, item.removeprefix("--config.").partition("=")[0])
        if message:
            raise ValueError(message)
    values = flags.FlagValues()
    try:
        config_flags.DEFINE_config_dict("config", cfg, flag_values=values, lock_config=False, sys_argv=argv)
        values(argv)
    except flags.Error as e:
        raise ValueError(" ".join(str(e).split())) from None
    return values.config


def load_config(spec: str, overrides: list[str] = ()):
    """A ConfigDict from `configs/train.py:arg` (its `get_config(arg)`) plus `--config.x=y` overrides."""
    import importlib.util

    path, _, arg = resolve_config_path(spec).partition(":")
    mod_spec = importlib.util.spec_from_file_location(f"_emotivetalk_config_{Path(path).stem}", path)
    if mod_spec is None or not Path(path).exists():
        raise FileNotFoundError(f"config file {path} not found")
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return apply_overrides(module.get_config(arg), list(overrides))


def run_train_command(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from emotivetalk_jax import validate

    validate.check_output_folder(args.workdir, "--workdir")
    validate.check_file(resolve_config_path(args.config).partition(":")[0], "--config file")
    cfg = load_config(args.config, getattr(args, "overrides", []))
    from emotivetalk_jax.accelerators import setup_compilation_cache
    from emotivetalk_jax.models import attention
    from emotivetalk_jax.train.loop import train

    if getattr(args, "attention", None):
        cfg.attention = args.attention
    attention.set_default(cfg.get("attention", "auto"))  # before the step is traced
    setup_compilation_cache()

    return train(cfg, args.workdir)


def train_from_args(argv: list[str]) -> dict:
    p = _TrainParser(prog="emotivetalk train")
    _add_arguments(p)
    return run_train_command(p.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    """The launch scripts' entry: a SIGTERM saves and exits 0 (status "preempted"; the scheduler
    requeues); SIGINT ends with one line and exit 130, keeping the last checkpoint."""
    import json

    from emotivetalk_jax.interrupts import Interrupted, handle_signals

    with handle_signals():
        try:
            result = train_from_args(sys.argv[1:] if argv is None else argv)
        except KeyboardInterrupt as e:
            name = e.name if isinstance(e, Interrupted) else "SIGINT"
            print(f"emotivetalk train: interrupted by {name}; the last checkpoint is kept", file=sys.stderr)
            return e.exit_code if isinstance(e, Interrupted) else 130
    print(json.dumps(result, indent=2))
    return 0 if result.get("status") in ("done", "preempted") else 1


if __name__ == "__main__":
    sys.exit(main())
