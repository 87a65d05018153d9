"""Ahead-of-time compile of the full stage-2 step (ETHD `emotivetalk_512`, 120 frames at
512 x 512, bf16 compute, fp32 master weights, 8-bit Adam) for an 8-device mesh from
abstract inputs, and XLA's per-device memory estimate with and without rematerialisation.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/train_memory.py \
        [--variant emotivetalk_512] [--stage ethd|student] [--remat none,blocks] [--mesh "[('data',1),('fsdp',8),('tensor',1)]"] [--lower-only]

Nothing is allocated: models are built with `nnx.eval_shape`, the batch is ShapeDtypeStructs.
The estimate is XLA's buffer assignment for the CPU backend (argument + output + temp - alias
bytes per device); a GPU / TPU compile of the same program differs in fusion and layout,
so treat it as an order of magnitude and as the with/without-remat ratio. In particular the
CPU backend materialises every attention's scores (f32[120, 5, 4096, 4096] = 37.5 GiB per
spatial self-attention at 512 px), which GPU / TPU flash attention never holds.

On a CPU the full compile takes hours (LLVM code generation of the per-device program), but
buffer assignment comes first: `--from-dump DIR` has XLA dump it there and reads the
per-device totals from `*jit_step.cpu_after_optimizations-buffer-assignment.txt` as soon as
it appears (about 10 minutes on 2 cores), then stops without waiting for code generation.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
if "--from-dump" in sys.argv:  # before jax reads XLA_FLAGS
    _DUMP = sys.argv[sys.argv.index("--from-dump") + 1]
    os.environ["XLA_FLAGS"] += f" --xla_dump_to={_DUMP} --xla_dump_hlo_as_text --xla_dump_hlo_module_re=jit_step"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402

from configs.train import get_config  # noqa: E402
from emotivetalk_jax import sharding as shd  # noqa: E402
from emotivetalk_jax.train import loop  # noqa: E402
from emotivetalk_jax.train.optim import state_bytes  # noqa: E402
from emotivetalk_jax.train.stages import build_stage  # noqa: E402


def abstract_batch(stage, batch_size: int, mesh, mesh_rules) -> dict:
    d = stage.data
    f, s = d["frames"], d["size"]
    shapes = {"frames": ((batch_size, f, s, s, 3), np.uint8), "reference": ((batch_size, s, s, 3), np.uint8),
              "audio": ((batch_size, 640 * (f + 2 * d["audio_context"])), np.float32)}
    for m in d["mask_sizes"]:
        shapes[f"mask_lip_{m}"] = shapes[f"mask_face_{m}"] = ((batch_size, m, m, 1), np.float32)
    if stage.audio_encoder is not None:  # the loader's cached whole-utterance features (`frame_features`)
        dim = int(stage.audio_encoder.config["hidden_size"])
        shapes["frame_features"] = ((batch_size, f + 2 * d["audio_context"], dim), np.float32)
    return {k: jax.ShapeDtypeStruct(sh, dt, sharding=NamedSharding(mesh, shd.batch_spec(sh, mesh, mesh_rules)))
            for k, (sh, dt) in shapes.items()}


def buffer_assignment_gib(path: Path) -> dict:
    """Per-device bytes of XLA's buffer assignment dump, by kind (parameter / temp / ...)."""
    import re

    kinds = {"parameter": 0, "constant": 0, "thread-local": 0, "temp": 0}
    for line in path.read_text().splitlines():
        m = re.match(r"allocation \d+: size (\d+), (.*)", line)
        if m:
            rest = m.group(2)
            kind = next((k for k in ("parameter", "constant", "thread-local") if rest.startswith(k)), "temp")
            kinds[kind] += int(m.group(1))
    out = {f"{k.replace('-', '_')}_gib": round(v / 2**30, 4) for k, v in kinds.items()}
    out["per_device_gib"] = round(sum(kinds.values()) / 2**30, 4)
    return out


def _wait_for_dump(lowered, options: dict, dump: Path, before: set, timeout_s: float = 6 * 3600) -> dict:
    """Compile in a daemon thread; return the buffer assignment's totals as soon as XLA dumps it."""
    import threading

    threading.Thread(target=lambda: lowered.compile(compiler_options=options or None), daemon=True).start()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        new = [p for p in dump.glob("*jit_step.cpu_after_optimizations-buffer-assignment.txt") if p.name not in before]
        if new:
            time.sleep(5)  # let XLA finish writing it
            return dict(buffer_assignment_s=round(time.perf_counter() - t0, 1), **buffer_assignment_gib(new[0]))
        time.sleep(5)
    raise TimeoutError(f"no buffer assignment in {dump} after {timeout_s:.0f} s")


def measure(variant: str, remat: str, mesh_cfg, batch_size: int, lower_only: bool, options: dict,
            dump: Path | None = None, stage_name: str = "ethd") -> dict:
    cfg = get_config(f"stage={stage_name},variant={variant}")
    if stage_name == "student":  # the paper's two-branch guidance folded in: the teacher runs both branches
        cfg.teacher_lip_scale, cfg.teacher_expr_scale = 1.0, 2.5
    cfg.remat = remat
    cfg.batch_size = batch_size
    cfg.mesh = mesh_cfg
    t0 = time.perf_counter()
    stage = build_stage(cfg, abstract=True)
    program = loop.build_program(cfg, stage=stage)
    frozen = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), stage.frozen_state,
                          program.frozen_shardings)
    batch = abstract_batch(stage, batch_size, program.mesh, program.mesh_rules)
    lowered = program.step_fn.lower(program.abstract, frozen, batch)
    t1 = time.perf_counter()
    out = dict(stage=stage_name, variant=variant, remat=remat, mesh=dict(program.mesh.shape), batch=batch_size,
               frames=stage.data["frames"], size=stage.data["size"], lower_s=round(t1 - t0, 1),
               trained_params=int(sum(np.prod(x.shape) for x in jax.tree.leaves(program.abstract.params))),
               opt_state_gib=state_bytes(program.abstract.opt) / 2**30,
               params_gib=state_bytes(program.abstract.params) / 2**30)
    if lower_only:
        return out
    if dump is not None:
        before = {p.name for p in dump.glob("*buffer-assignment.txt")}
        out.update(_wait_for_dump(lowered, options, dump, before))
        return out
    compiled = lowered.compile(compiler_options=options) if options else lowered.compile()
    out["compile_s"] = round(time.perf_counter() - t1, 1)
    m = compiled.memory_analysis()
    if m is not None:
        per_device = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
        out.update(argument_gib=m.argument_size_in_bytes / 2**30, output_gib=m.output_size_in_bytes / 2**30,
                   temp_gib=m.temp_size_in_bytes / 2**30, alias_gib=m.alias_size_in_bytes / 2**30,
                   per_device_gib=per_device / 2**30)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="emotivetalk_512")
    p.add_argument("--stage", default="ethd", choices=("ethd", "student"),
                   help="student: the consistency-distillation step (a frozen teacher ETHD beside the student)")
    p.add_argument("--remat", default="none,blocks")
    p.add_argument("--mesh", default="[('data', 1), ('fsdp', 8), ('tensor', 1)]")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lower-only", action="store_true")
    p.add_argument("--fast-compile", action="store_true", help="xla_backend_optimization_level=0")
    p.add_argument("--from-dump", metavar="DIR", type=Path,
                   help="read the per-device estimate from XLA's buffer-assignment dump in DIR, skip code generation")
    a = p.parse_args()
    options = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True} if a.fast_compile else {}
    for remat in a.remat.split(","):
        print(json.dumps(measure(a.variant, remat, ast.literal_eval(a.mesh), a.batch, a.lower_only, options,
                                 a.from_dump, a.stage)), flush=True)
    if a.from_dump is not None:
        os._exit(0)  # the compile threads would run code generation for hours


if __name__ == "__main__":
    main()
