"""`python -m emotivetalk_jax.eval.probes`: the learning gates (`train.gates`) of trained workdirs.

`--encoders W0 [--audio W] [--vaid W1]` rebuilds the trained parts from their workdirs and
prints their gates as one JSON object; `--check WORKDIR` reads the last gate row a training
run logged and exits 1 when a bar is missed. The gates themselves (clips, readouts, bars) live
in `train.gates`, which the stages call at every checkpoint; they are re-exported here.
"""

from __future__ import annotations

from emotivetalk_jax.train import gates
from emotivetalk_jax.train.gates import (BARS, FIT_OFFSET, TRAINING_WAY_TOLERANCE, ProbeClips,  # noqa: F401
                                         audio_window_gate, denoiser_gates, face_latents, inference_windows,
                                         lip_audio_gates, nearest_mean_accuracy, passed, probe_clips, ridge_r,
                                         training_windows)


def face_gates(face, fit: ProbeClips, ev: ProbeClips) -> dict[str, float]:
    """`train.gates.face_gates` with this module's `face_latents` (which a caller may replace)."""
    return gates.face_gates(face, fit, ev, latents=face_latents)


# ----------------------------------------------------------------------------- CLI


def workdir_gates(*, encoders: str | None = None, audio: str | None = None, vaid: str | None = None,
                  variant: str = "demo", clips: int = 16, size: int = 0, data_seed: int = 0) -> dict:
    """Gates of trained workdirs: stage-0 (`encoders`), audio-stage (`audio`) and stage-1 (`vaid`)."""
    from emotivetalk_jax.models.vaid_variants import get_vaid_variant
    from emotivetalk_jax.train import stages as S
    from emotivetalk_jax.train.commands import load_config

    cfg = load_config(f"configs/train.py:stage=vaid,variant={variant}")
    cfg.init.face_encoders, cfg.init.audio, cfg.init.vaid = encoders or "", audio or "", vaid or ""
    v = get_vaid_variant(variant)
    size = size or v.face.image_size
    fit, ev = probe_clips("train", clips, size, data_seed), probe_clips("test", clips, size, data_seed)
    out = {}
    if encoders:
        out.update(face_gates(S.face_encoders(cfg, v, 0), fit, ev))
    if vaid:
        out.update(lip_audio_gates(S.vaid_model(cfg, v, 0), S.audio_encoder(cfg, 0), fit, ev,
                                   frames=int(v.dicte.train_frames)))
    elif audio:
        hw = v.perceiver.window_half_width
        enc = S.audio_encoder(cfg, 0)
        out.update(audio_window_gate(inference_windows(enc, fit, hw), inference_windows(enc, ev, hw), fit, ev))
    return {"gates": out, "passed": passed(out), "clips": clips, "size": size}


def logged_gates(workdir: str) -> dict[str, float]:
    """The last gate row a training run logged to `WORKDIR/metrics.jsonl`."""
    import json
    from pathlib import Path

    rows = [json.loads(l) for l in (Path(workdir) / "metrics.jsonl").read_text().splitlines() if '"gate/' in l]
    if not rows:
        raise SystemExit(f"{workdir}/metrics.jsonl has no gate rows; was the run started with gate_clips > 0?")
    return rows[-1]


def main(argv=None) -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m emotivetalk_jax.eval.probes", description=__doc__.split("\n")[0])
    p.add_argument("--encoders", help="stage-0 (encoders) workdir")
    p.add_argument("--audio", help="audio-stage workdir, or a converted / Hugging Face wav2vec2 folder")
    p.add_argument("--vaid", help="stage-1 (vaid) workdir (needs --audio for the encoder it was trained on)")
    p.add_argument("--variant", default="demo")
    p.add_argument("--clips", type=int, default=16, help="clips to fit on and clips to score (each)")
    p.add_argument("--size", type=int, default=0, help="render size (default: the face encoders' input size)")
    p.add_argument("--check", metavar="WORKDIR", help="only read the last gates WORKDIR logged; exit 1 if a bar fails")
    a = p.parse_args(argv)
    if a.check:
        row = logged_gates(a.check)
        gates = {k: v for k, v in row.items() if k.startswith("gate/")}
        ok = passed(gates)
        print(json.dumps({"workdir": a.check, "step": row["step"], "gates": gates, "passed": ok}))
        return 0 if all(ok.values()) else 1
    print(json.dumps(workdir_gates(encoders=a.encoders, audio=a.audio, vaid=a.vaid, variant=a.variant,
                                   clips=a.clips, size=a.size)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
