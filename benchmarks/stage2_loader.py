"""How fast a stage-2 workdir's input pipeline feeds the step, apart from the step.

    python benchmarks/stage2_loader.py WORKDIR [--batch 32] [--batches 20]

Builds the loader as `train.loop` does (`make_dataset`) from the run's own config
(`bundle.training_config`), at `--batch` examples per batch, reading the frozen-output and
audio-feature caches already in WORKDIR. Prints one JSON line: ms per batch and examples per
second over the first `--batches` batches (clips generated on first use) and over the next
`--batches` (clips cached), to set beside the run's logged `step_time`.
"""

from __future__ import annotations

import argparse
import json
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdir")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=20)
    a = p.parse_args(argv)

    import ml_collections

    from emotivetalk_jax.bundle import training_config
    from emotivetalk_jax.train.inputs import make_dataset
    from emotivetalk_jax.train.stages import build_stage

    cfg = ml_collections.ConfigDict(training_config(a.workdir))
    stage = build_stage(cfg)
    data = make_dataset(cfg.data, stage.data, batch_size=a.batch, seed=int(cfg.seed),
                        audio_encoder=stage.audio_encoder, frozen_outputs=stage.frozen_outputs,
                        cache_dir=a.workdir)
    it = iter(data)
    next(it)
    out = {"workdir": a.workdir, "batch": a.batch, "keys": sorted(next(it))}
    for phase in ("first", "cached"):
        t0 = time.perf_counter()
        for _ in range(a.batches):
            next(it)
        dt = (time.perf_counter() - t0) / a.batches
        out[f"{phase}_ms_per_batch"] = round(1000 * dt, 1)
        out[f"{phase}_examples_per_s"] = round(a.batch / dt, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
