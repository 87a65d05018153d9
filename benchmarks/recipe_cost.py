"""The demo recipe's cost and gates, per stage, read from its workdirs' `metrics.jsonl`.

    python benchmarks/recipe_cost.py /tmp/emotivetalk_demo [--stages vae,encoders,audio,vaid,ethd,vae_dec]

For each stage: the last step logged, the median seconds per step, the training time (the sum
of each logged interval's mean step time times the interval; checkpoint writes and compiles
are not in it), the seconds its gates took, and the last gate row. A stage that was stopped
and resumed counts only the rows its final log holds (the writer drops rows past the last
checkpoint on resume), so this is the time of the steps that made the checkpoint.
Printed as a markdown table, one row per stage, then one JSON line per stage.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

STAGES = ("vae", "encoders", "audio", "vaid", "ethd", "vae_dec")


def stage_cost(workdir: Path) -> dict | None:
    """Cost and last gates of one stage's workdir; None when it has no metrics yet."""
    log = workdir / "metrics.jsonl"
    if not log.exists():
        return None
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "step_time" in r]
    gates = [r for r in rows if any(k.startswith("gate/") for k in r)]
    if not steps:
        return None
    train_s, prev = 0.0, 0
    for r in steps:
        train_s += r["step_time"] * (r["step"] - prev)
        prev = r["step"]
    last_gate = {k: round(v, 4) for k, v in gates[-1].items() if k.startswith("gate/") and k != "gate/seconds"} if gates else {}
    return {"stage": workdir.name, "steps": steps[-1]["step"],
            "median_step_s": round(statistics.median(r["step_time"] for r in steps), 3),
            "train_minutes": round(train_s / 60, 1),
            "gate_minutes": round(sum(r.get("gate/seconds", 0.0) for r in gates) / 60, 1),
            "last_gate_step": gates[-1]["step"] if gates else None, "gates": last_gate}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", help="the recipe's WORKDIR (launch/train_demo.sh's first argument)")
    ap.add_argument("--stages", default=",".join(STAGES))
    args = ap.parse_args(argv)
    rows = [c for s in args.stages.split(",") if (c := stage_cost(Path(args.root) / s))]
    print("| stage | steps | median s/step | training min | gate min | gates at last checkpoint |")
    print("|---|---|---|---|---|---|")
    for c in rows:
        g = ", ".join(f"{k[5:]} {v}" for k, v in c["gates"].items()) or "-"
        print(f"| {c['stage']} | {c['steps']} | {c['median_step_s']} | {c['train_minutes']} | {c['gate_minutes']} | {g} |")
    for c in rows:
        print(json.dumps(c))


if __name__ == "__main__":
    main()
