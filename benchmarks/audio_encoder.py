"""wav2vec2-base audio encoding, JAX (jit, chunked) vs transformers PyTorch (eager), fp32 CPU.

    python benchmarks/audio_encoder.py [--seconds 10 60] [--torch-single-max 120]   (600 s: ~25 min on 2 cores)

One random wav2vec2-base (transformers' default `Wav2Vec2Config`, 94M parameters) is saved
once and loaded by both sides (JAX through `load_hf_audio_encoder`). Every case runs in a
fresh subprocess so its peak RSS (`ru_maxrss`, model and framework included) is its own.

Cases, each producing the last layer's features for the whole clip:
- jax chunked: `encode_chunked` (30 s kept + 5 s context each side, one compiled window
  shape; clips up to 40 s run in one pass). "first" includes compilation, "warm" is a
  second call.
- torch single: one eager forward over the whole clip (what `Wav2Vec2Model` users do);
  attention memory grows with T^2, so it is skipped past `--torch-single-max` seconds.
- torch chunked: the same windows as the JAX side, eager, each window's own GroupNorm
  statistics (a timing reference, not exact).

Threads: XLA's CPU client sizes its intra-op thread pool to the number of cores, so
`torch.set_num_threads(os.cpu_count())` gives PyTorch the same count (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

SR = 16000


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _wave(seconds: float):
    import numpy as np

    rng = np.random.default_rng(0)
    w = rng.standard_normal(int(seconds * SR)).astype(np.float32)
    return (w - w.mean()) / w.std()


def _child(case: str, seconds: float, ckpt: str) -> dict:
    import numpy as np

    wave = _wave(seconds)
    base = _rss_mb()
    if case == "jax":
        from emotivetalk_jax.convert.audio import load_hf_audio_encoder
        from emotivetalk_jax.data.audio import encode_chunked

        model = load_hf_audio_encoder(ckpt)
        loaded = _rss_mb()
        t0 = time.perf_counter()
        out = encode_chunked(model, wave)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = encode_chunked(model, wave)
        warm = time.perf_counter() - t0
        return dict(first=first, warm=warm, rss=_rss_mb(), loaded=loaded, base=base, shape=list(out.shape))
    import torch
    from transformers import Wav2Vec2Model

    torch.set_num_threads(os.cpu_count())
    model = Wav2Vec2Model.from_pretrained(ckpt).eval()
    loaded = _rss_mb()
    x = torch.from_numpy(wave)[None]
    t0 = time.perf_counter()
    with torch.inference_mode():
        if case == "torch_single":
            out = model(x).last_hidden_state[0].numpy()
        else:  # same windows as encode_chunked
            stride, field, total = 320, 400, (len(wave) - 400) // 320 + 1
            core, ctx = 1500, 250
            window = core + 2 * ctx
            span = stride * (window - 1) + field
            out = np.empty((total, model.config.hidden_size), np.float32)
            for a in range(0, total, core):
                start = max(0, min(a - ctx, total - window))
                feats = model(x[:, stride * start : stride * start + span]).last_hidden_state[0].numpy()
                b = min(a + core, total)
                out[a:b] = feats[a - start : b - start]
    run = time.perf_counter() - t0
    return dict(first=run, warm=run, rss=_rss_mb(), loaded=loaded, base=base, shape=list(out.shape),
                threads=torch.get_num_threads())


def _check(ckpt: str) -> float:
    """Max |JAX - PyTorch| on 10 s of audio (last layer)."""
    import numpy as np
    import torch
    from transformers import Wav2Vec2Model

    from emotivetalk_jax.convert.audio import load_hf_audio_encoder
    from emotivetalk_jax.data.audio import encode_chunked

    wave = _wave(10)
    with torch.inference_mode():
        ref = Wav2Vec2Model.from_pretrained(ckpt).eval()(torch.from_numpy(wave)[None]).last_hidden_state[0].numpy()
    ours = encode_chunked(load_hf_audio_encoder(ckpt), wave)
    return float(np.abs(ours - ref).max())


def _run(case: str, seconds: float, ckpt: str) -> dict:
    cmd = [sys.executable, __file__, "--child", case, "--seconds", str(seconds), "--ckpt", ckpt]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
        return dict(error=f"exit {proc.returncode}: {tail[0][:80]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, nargs="+", default=[10, 60])
    p.add_argument("--torch-single-max", type=float, default=120)
    p.add_argument("--child")
    p.add_argument("--ckpt")
    a = p.parse_args()
    if a.child:
        print(json.dumps(_check(a.ckpt) if a.child == "check" else _child(a.child, a.seconds[0], a.ckpt)))
        return

    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    with tempfile.TemporaryDirectory() as ckpt:
        torch.manual_seed(0)
        Wav2Vec2Model(Wav2Vec2Config()).save_pretrained(ckpt, safe_serialization=True)
        print(f"wav2vec2-base (random), fp32 CPU, {os.cpu_count()} threads each side "
              f"(XLA intra-op pool = cores; torch.set_num_threads({os.cpu_count()}))")
        err = _run("check", 10, ckpt)
        print(f"max |JAX - PyTorch| on 10 s, last layer: {err}\n")
        head = (f"{'audio':>7} | {'JAX first':>9} {'JAX warm':>8} {'JAX RSS':>8} | {'torch 1-pass':>12} {'RSS':>7} | "
                f"{'torch chunked':>13} {'RSS':>7} | {'warm/1-pass':>11} {'warm/chunk':>10}")
        print(head + "\n" + "-" * len(head), flush=True)
        for s in a.seconds:
            j = _run("jax", s, ckpt)
            t1 = _run("torch_single", s, ckpt) if s <= a.torch_single_max else dict(error="skipped")
            tc = _run("torch_chunked", s, ckpt)
            cell = lambda r, k, f: f.format(r[k]) if k in r else r.get("error", "?")[:9]  # noqa: E731
            ratio = lambda r: f"{j['warm'] / r['first']:.2f}" if "first" in r and "warm" in j else "-"  # noqa: E731
            print(f"{s:>6.0f}s | {cell(j, 'first', '{:8.2f}s'):>9} {cell(j, 'warm', '{:7.2f}s'):>8} "
                  f"{cell(j, 'rss', '{:6.0f}MB'):>8} | {cell(t1, 'first', '{:11.2f}s'):>12} {cell(t1, 'rss', '{:5.0f}MB'):>7} | "
                  f"{cell(tc, 'first', '{:12.2f}s'):>13} {cell(tc, 'rss', '{:5.0f}MB'):>7} | {ratio(t1):>11} {ratio(tc):>10}",
                  flush=True)
        print("\nRSS = peak resident memory of the whole process (weights ~360 MB, framework, activations).")


if __name__ == "__main__":
    main()
