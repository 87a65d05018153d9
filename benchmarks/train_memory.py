"""Ahead-of-time compile of the full stage-2 step (ETHD `emotivetalk_512`, 120 frames at
512 x 512, bf16 compute, fp32 master weights, 8-bit Adam) for an 8-device mesh from
abstract inputs, and XLA's per-device memory estimate with and without rematerialisation.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/train_memory.py \
        [--variant emotivetalk_512] [--remat none,blocks] [--mesh "[('data',1),('fsdp',8),('tensor',1)]"] [--lower-only]

Nothing is allocated: models are built with `nnx.eval_shape`, the batch is ShapeDtypeStructs.
The estimate is XLA's buffer assignment for the CPU backend (argument + output + temp - alias
bytes per device); a GPU / TPU compile of the same program differs in fusion and layout,
so treat it as an order of magnitude and as the with/without-remat ratio.
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


def abstract_batch(stage, batch_size: int, mesh) -> dict:
    d = stage.data
    f, s = d["frames"], d["size"]
    shapes = {"frames": ((batch_size, f, s, s, 3), np.uint8), "reference": ((batch_size, s, s, 3), np.uint8),
              "audio": ((batch_size, 640 * (f + 2 * d["audio_context"])), np.float32)}
    for m in d["mask_sizes"]:
        shapes[f"mask_lip_{m}"] = shapes[f"mask_face_{m}"] = ((batch_size, m, m, 1), np.float32)
    return {k: jax.ShapeDtypeStruct(sh, dt, sharding=NamedSharding(mesh, shd.batch_spec(sh, mesh)))
            for k, (sh, dt) in shapes.items()}


def measure(variant: str, remat: str, mesh_cfg, batch_size: int, lower_only: bool, options: dict) -> dict:
    cfg = get_config(f"stage=ethd,variant={variant}")
    cfg.remat = remat
    cfg.batch_size = batch_size
    cfg.mesh = mesh_cfg
    t0 = time.perf_counter()
    stage = build_stage(cfg, abstract=True)
    program = loop.build_program(cfg, stage=stage)
    frozen = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), stage.frozen_state,
                          program.frozen_shardings)
    batch = abstract_batch(stage, batch_size, program.mesh)
    lowered = program.step_fn.lower(program.abstract, frozen, batch)
    t1 = time.perf_counter()
    out = dict(variant=variant, remat=remat, mesh=dict(program.mesh.shape), batch=batch_size,
               frames=stage.data["frames"], size=stage.data["size"], lower_s=round(t1 - t0, 1),
               trained_params=int(sum(np.prod(x.shape) for x in jax.tree.leaves(program.abstract.params))),
               opt_state_gib=state_bytes(program.abstract.opt) / 2**30,
               params_gib=state_bytes(program.abstract.params) / 2**30)
    if lower_only:
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
    p.add_argument("--remat", default="none,blocks")
    p.add_argument("--mesh", default="[('data', 1), ('fsdp', 8), ('tensor', 1)]")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lower-only", action="store_true")
    p.add_argument("--fast-compile", action="store_true", help="xla_backend_optimization_level=0")
    a = p.parse_args()
    options = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True} if a.fast_compile else {}
    for remat in a.remat.split(","):
        print(json.dumps(measure(a.variant, remat, ast.literal_eval(a.mesh), a.batch, a.lower_only, options)),
              flush=True)


if __name__ == "__main__":
    main()
