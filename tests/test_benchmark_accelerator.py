"""benchmarks/accelerator.py stays runnable: its cheapest section with --tiny on CPU, in a subprocess
(the full run and the other sections are for an accelerator; see benchmarks/README.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_accelerator_benchmark_tiny_vae(tmp_path):
    out = tmp_path / "rows.jsonl"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accelerator.py"), "--tiny", "--sections", "vae",
                        "--repeats", "1", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    printed = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert rows == printed
    assert {row["section"] for row in rows} == {"env", "vae"}
    vae = [row for row in rows if row["section"] == "vae"]
    assert vae and all(row["status"] == "ok" for row in vae), vae
    assert vae[0]["median_s"] > 0 and vae[0]["frames"] == 4
    assert "| vae | jax decode |" in r.stdout  # the final table
