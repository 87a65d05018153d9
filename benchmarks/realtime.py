"""Real time: the teacher (its DDIM steps, two guidance branches) against the distilled student
(1, 2 and 4 consistency steps, one branch), on the same inputs in one process, warm.

    python benchmarks/realtime.py [--teacher DIR] [--student DIR] [--seconds 4] [--repeats 2] [--fast-decode]

Defaults: the student is the shipped demo bundle (`emotivetalk_jax/assets/demo`, sampler
"consistency"), the teacher `benchmarks/teacher` when present (`--teacher` otherwise: the
bundle the student was distilled from). Inputs: the packaged demo portrait and the first
`--seconds` of the packaged demo speech (repeated if shorter), emotion "happy", seed 0.

Per run: compute seconds per second of video, by stage (portrait, audio, lip, expression,
denoise, decode), the best of `--repeats` warm runs after a cold one; the ratios of the
teacher's denoise and total to the student's; and streaming (`EmotiveTalkPipeline.stream`,
0.2 s chunks, all available at once) at the student's default steps: the time to the first
frame and the whole stream, warm. `--fast-decode`: each student run again with the bundle's fast
decoder (`fast_decoder/`, `EmotiveTalkPipeline.fast_decode`), as `student_S_fast`, in the same
process, and the stream with it too (`stream_fast`). One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "emotivetalk_jax" / "assets"


def _inputs(seconds: float) -> tuple[str, np.ndarray]:
    import soundfile

    wave, sr = soundfile.read(str(ASSETS / "demo_speech.wav"), dtype="float32")
    assert sr == 16000 and wave.ndim == 1
    n = int(round(seconds * sr))
    wave = np.concatenate([wave] * (n // len(wave) + 1))[:n]
    return str(ASSETS / "demo_portrait.png"), wave


def _runs(pipe, portrait, wave, steps, repeats: int) -> dict:
    """The warm compute seconds per video second of `pipe` at `steps`, by stage."""
    runs = []
    for _ in range(1 + repeats):
        r = pipe(portrait, wave, emotion="happy", seed=0, steps=steps)
        runs.append(dict(r.timings))
    video_s = r.info["num_frames"] / pipe.settings.fps
    warm = min(runs[1:] or runs, key=lambda t: sum(t.values()))
    return {"steps": steps or pipe.settings.steps, "sampler": pipe.settings.sampler,
            "decoder": "fast" if pipe.fast_decode else "full",
            "branches": 1 if pipe.settings.lip_scale == pipe.settings.expr_scale == 1.0 else 2,
            "seconds_per_video_second": {k: round(v / video_s, 4) for k, v in warm.items()},
            "total": round(sum(warm.values()) / video_s, 4), "cold_total_s": round(sum(runs[0].values()), 2)}


def _stream(pipe, portrait, wave, repeats: int) -> dict:
    best = None
    for _ in range(1 + repeats):
        stats = {}
        t0 = time.perf_counter()
        chunks = [wave[i:i + 3200] for i in range(0, len(wave), 3200)]
        n = sum(len(f) for f in pipe.stream(portrait, chunks, emotion="happy", seed=0, stats=stats))
        total = time.perf_counter() - t0
        if best is None or total < best["total_s"]:
            best = {"first_frame_s": round(stats["first_frame_s"], 4), "total_s": round(total, 3),
                    "seconds_per_video_second": round(total / (n / pipe.settings.fps), 4), "frames": n}
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default=str(ROOT / "benchmarks" / "teacher"))
    p.add_argument("--student", default=str(ASSETS / "demo"))
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--student-steps", default="1,2,4")
    p.add_argument("--fast-decode", action="store_true",
                   help="each student run also with the student bundle's fast decoder (fast_decoder/)")
    a = p.parse_args()

    import jax

    from emotivetalk_jax.pipeline import EmotiveTalkPipeline

    portrait, wave = _inputs(a.seconds)
    student = EmotiveTalkPipeline.from_pretrained(a.student, progress=False)
    if student.settings.sampler != "consistency":
        raise SystemExit(f"{a.student} is not a student bundle (sampler {student.settings.sampler!r})")
    out = {"device": str(jax.devices()[0]), "video_seconds": len(wave) / 16000, "student_bundle": a.student}
    if Path(a.teacher, "config.json").is_file():
        teacher = EmotiveTalkPipeline.from_pretrained(a.teacher, progress=False)
        out["teacher_bundle"] = a.teacher
        out["teacher"] = _runs(teacher, portrait, wave, None, a.repeats)
    for s in (int(x) for x in a.student_steps.split(",")):
        student.fast_decode = False
        out[f"student_{s}"] = _runs(student, portrait, wave, s, a.repeats)
        if a.fast_decode:
            student.fast_decode = True  # one-line error where the bundle has no fast_decoder/
            out[f"student_{s}_fast"] = _runs(student, portrait, wave, s, a.repeats)
    student.fast_decode = False
    if "teacher" in out:
        t = out["teacher"]
        for s in a.student_steps.split(","):
            st = out[f"student_{s}"]
            st["teacher_over_student"] = {
                "denoise": round(t["seconds_per_video_second"]["denoise"] / st["seconds_per_video_second"]["denoise"],
                                 2),
                "total": round(t["total"] / st["total"], 2)}
    out["stream"] = _stream(student, portrait, wave, a.repeats)
    if a.fast_decode:
        student.fast_decode = True
        out["stream_fast"] = _stream(student, portrait, wave, a.repeats)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
