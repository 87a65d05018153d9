"""What the speech-emotion head reads from the utterances `bench-synthetic --emotion-source audio`
hands it, without generating anything.

    python benchmarks/audio_source_keywords.py [--checkpoint DIR] [--clips 16] [--data-seed 0]

For each bench clip: its emotion, the held-out utterance of that emotion by another voice that
the bench passes as `--emotion-audio` (`eval.bench_sources.other_clip`), and the keyword the
checkpoint's head reads from it. An audio-source clip whose keyword is the clip's emotion gets
the text source's codebook row (`emotion.resolve_emotion`), so its video is the text run's.
"""

from __future__ import annotations

import argparse
import json

from emotivetalk_jax.data.synthetic import SyntheticDomain
from emotivetalk_jax.emotion.speech import load_speech_recognizer
from emotivetalk_jax.eval.bench_sources import other_clip
from emotivetalk_jax.pipeline import default_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--data-seed", type=int, default=0)
    args = p.parse_args()
    rec = load_speech_recognizer(f"{args.checkpoint or default_checkpoint()}/speech_head")
    domain, rows = SyntheticDomain(args.data_seed), []
    for i in range(args.clips):
        clip = domain.clip(i, "test")
        other = other_clip(domain, clip, i, emotion=clip.emotion)
        keyword, probs = rec.predict(other.audio)
        rows.append({"clip": clip.name, "emotion": clip.emotion, "from": other.name, "read": keyword,
                     "p": round(float(probs.max()), 3)})
    right = sum(r["read"] == r["emotion"] for r in rows)
    print(json.dumps({"read_right": right, "clips": len(rows), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
