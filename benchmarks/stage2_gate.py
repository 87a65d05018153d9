"""Stage 2's gates on a finished (or running) `ethd` workdir, on its EMA weights by default.

    python benchmarks/stage2_gate.py WORKDIR [--raw]

The training loop logs the same gates (`gate/x0_lip_corr`, `gate/x0_emotion_acc`,
`gate/x0_psnr`, `gate/expr_transfer`; `train.gates`) at every checkpoint, but on the raw
parameters; this reads the workdir's latest checkpoint, with the EMA that `export-bundle`
ships unless `--raw`, and prints one JSON line. The stage is rebuilt from the run's own
config (`bundle.training_config`), without its frozen-output cache.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdir")
    p.add_argument("--raw", action="store_true", help="the trained parameters, not their EMA")
    a = p.parse_args(argv)

    import ml_collections
    from flax import nnx

    from emotivetalk_jax.bundle import training_config
    from emotivetalk_jax.convert.engine import fill_from_arrays
    from emotivetalk_jax.train.checkpoint import restore_model_arrays
    from emotivetalk_jax.train.stages import build_stage

    cfg = ml_collections.ConfigDict(training_config(a.workdir))
    cfg.frozen_cache = False
    stage = build_stage(cfg)
    model = fill_from_arrays(stage.model(stage.init_params, stage.init_rest),
                             restore_model_arrays(a.workdir, ema=not a.raw), a.workdir)
    t0 = time.perf_counter()
    gates = stage.gate(model, nnx.merge(stage.frozen_graphdef, stage.frozen_state))
    step = max(int(d.name) for d in (Path(a.workdir) / "checkpoints").iterdir() if d.name.isdigit())
    print(json.dumps({"workdir": a.workdir, "step": step, "weights": "raw" if a.raw else "ema",
                      **gates, "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
