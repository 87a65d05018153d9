"""Preemption: kill -9 mid-run, resume, and the losses equal an uninterrupted run's exactly;
SIGTERM saves a checkpoint and exits; non-finite updates are skipped, counted, and stop
training after `max_bad_steps` in a row. CPU, deterministic (fixed seeds, data order from
the grain iterator state in the checkpoint)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAST = "{'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}"


def _args(workdir, total, stage="vaid", extra=()):
    return [sys.executable, "-m", "emotivetalk_jax.train.commands", "--config",
            f"configs/train.py:stage={stage},variant=tiny", "--workdir", str(workdir),
            f"--config.total_steps={total}", "--config.checkpoint.every=2", "--config.log_every=1",
            "--config.data.num_clips=8", "--config.frames=6", "--config.progress=False", "--config.gate_clips=0",
            f"--config.compiler_options={FAST}", *extra]


def _env(cache):
    # the persistent compilation cache lets the later processes skip the compile
    return dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _losses(workdir) -> dict[int, float]:
    rows = [json.loads(l) for l in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]  # step rows (gate rows, when a run logs them, carry gate/* only)
    return {r["step"]: r["loss"] for r in rows}


def _wait_for_step(proc, workdir, step, timeout=600):
    """Until the run has logged `step`."""
    path = Path(workdir) / "metrics.jsonl"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read()[-3000:]}")
        rows = path.read_text().splitlines() if path.exists() else []
        if any(json.loads(l)["step"] >= step for l in rows if l.strip()):
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


@pytest.mark.long
def test_kill9_then_resume_matches_uninterrupted_run(tmp_path):
    cache, total = tmp_path / "cache", 8
    ref = subprocess.run(_args(tmp_path / "ref", total), env=_env(cache), cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    assert ref.returncode == 0, ref.stderr[-3000:]
    reference = _losses(tmp_path / "ref")
    assert sorted(reference) == list(range(1, total + 1))

    run = tmp_path / "run"
    proc = subprocess.Popen(_args(run, total), env=_env(cache), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    _wait_for_step(proc, run, 5)
    proc.kill()  # SIGKILL: no chance to save
    proc.wait()
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and max(steps) < total, steps

    # SIGTERM: saves the current step, exits cleanly. The resumed run first drops the rows the
    # killed one logged after its last checkpoint, so wait for a step never logged before.
    logged = max(_losses(run))
    assert logged >= 5
    proc = subprocess.Popen(_args(run, total), env=_env(cache), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    _wait_for_step(proc, run, logged + 1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 0
    # the preemption checkpoint is the step reached when the signal was handled
    saved = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert max(saved) > max(steps)

    res = subprocess.run(_args(run, total), env=_env(cache), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"status": "done"' in res.stdout
    resumed = _losses(run)
    logged = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, total + 1))  # each step once: the discarded rows are gone
    assert sorted(resumed) == sorted(reference)
    assert resumed == reference  # exactly, every step, including those recomputed after the kill


def test_nonfinite_updates_are_skipped_then_training_stops(tmp_path):
    # lr = nan makes every update non-finite: the step is skipped (parameters unchanged),
    # counted, and after 2 in a row training stops, keeping the last good checkpoint.
    from emotivetalk_jax.train.commands import train_from_args
    from emotivetalk_jax.train.loop import NonFiniteError

    args = _args(tmp_path / "nan", 6, stage="encoders", extra=["--config.max_bad_steps=2", "--config.batch_size=2"])
    args = args[3:]  # drop "python -m module"
    args[args.index("--config.frames=6")] = "--config.frames=0"
    with pytest.raises(NonFiniteError, match="2 non-finite updates in a row"):
        train_from_args(args + ["--config.optim.grad_clip=0.0", "--config.optim.lr=nan"])
