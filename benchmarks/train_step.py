"""Tiny stage-2 (ETHD) training steps per second on CPU, 1 vs 2 cores.

    python benchmarks/train_step.py [--steps 10] [--cores 1,2] [--optimizer adam8bit]

Each core count runs in its own process pinned with `taskset` (XLA's CPU thread pool follows
the affinity mask). The step is the full jitted stage-2 program (frozen wav2vec2 / face
encoders / V-AID / VAE preprocessing + ETHD forward and backward + the optimiser), global
batch 2, 4 frames of 16 x 16 (8 x 8 latents); compile time is excluded and reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(steps: int, optimizer: str, fast: bool) -> dict:
    sys.path.insert(0, str(ROOT))
    import jax

    from configs.train import get_config
    from emotivetalk_jax.train import loop
    from emotivetalk_jax.train.inputs import make_dataset

    c = get_config("stage=ethd,variant=tiny")
    c.optim.name = optimizer
    c.data.num_clips = 16
    program = loop.build_program(c)
    it = iter(make_dataset(c.data, program.stage.data, batch_size=int(c.batch_size), seed=0,
                           audio_encoder=program.stage.audio_encoder))
    batches = [program.global_batch(next(it)) for _ in range(steps + 1)]
    state, frozen = loop.initial_state(program, 0), loop.place_frozen(program)
    t0 = time.perf_counter()
    opts = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True} if fast else None
    step = loop.compile_step(program, state, frozen, batches[0], opts)
    compile_s = time.perf_counter() - t0
    state, m = step(state, frozen, batches[0])  # warm-up
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for b in batches[1:]:
        state, m = step(state, frozen, b)
    jax.block_until_ready(m)
    dt = time.perf_counter() - t0
    return dict(steps_per_s=steps / dt, s_per_step=dt / steps, compile_s=compile_s, loss=float(m["loss"]),
                examples_per_s=steps * int(c.batch_size) / dt)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--cores", default="1,2")
    p.add_argument("--optimizer", default="adam8bit")
    p.add_argument("--fast-compile", action="store_true", help="xla_backend_optimization_level=0 (slower steps)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print("RESULT" + json.dumps(_child(a.steps, a.optimizer, a.fast_compile)))
        return
    for n in [int(x) for x in a.cores.split(",")]:
        cpus = ",".join(str(i) for i in range(n))
        cmd = ["taskset", "-c", cpus, sys.executable, __file__, "--child", "--steps", str(a.steps),
               "--optimizer", a.optimizer] + (["--fast-compile"] if a.fast_compile else [])
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])
        res = json.loads([l for l in r.stdout.splitlines() if l.startswith("RESULT")][-1][6:])
        print(json.dumps(dict(cores=n, optimizer=a.optimizer, **res)), flush=True)


if __name__ == "__main__":
    main()
