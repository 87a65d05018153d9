"""Three frames of the default checkpoint side by side: mouth closed, mouth open, another emotion.

    python benchmarks/demo_frames.py [--checkpoint DIR] [--out benchmarks/demo_frames.png] [--clip 0]

Generates held-out synthetic clip `--clip` (test split: an identity and an utterance never
trained on) from its neutral portrait and speech, with the clip's own emotion keyword, then
again with `--other` as the emotion. Frames are read back with `data.measure`: the panel shows
the generated frame with the smallest and the largest measured mouth opening (with the true
opening of that frame from the clip's ground truth), then the middle frame of the other
emotion, upscaled 4x (nearest) with a caption strip. Prints one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="bundle folder (default: the installed demo)")
    p.add_argument("--out", default="benchmarks/demo_frames.png")
    p.add_argument("--clip", type=int, default=0)
    p.add_argument("--other", default=None, help="the second emotion (default: one the clip does not have)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=4)
    a = p.parse_args(argv)

    from PIL import Image, ImageDraw

    from emotivetalk_jax.data import face as facelib
    from emotivetalk_jax.data.synthetic import SyntheticDomain, domain_config
    from emotivetalk_jax.eval.synthetic_bench import _measure
    from emotivetalk_jax.pipeline import EmotiveTalkPipeline, default_checkpoint

    ckpt = a.checkpoint or default_checkpoint()
    if ckpt is None:
        print("no --checkpoint and no installed demo checkpoint", file=sys.stderr)
        return 2
    pipe = EmotiveTalkPipeline.from_pretrained(os.fspath(ckpt), progress=False)
    r = pipe.resolution
    domain = SyntheticDomain(0, domain_config(pipe.settings.synthetic_head_motion, pipe.settings.synthetic_moving_heads))
    clip = domain.clip(a.clip, "test")
    other = a.other or ("happy" if clip.emotion != "happy" else "sad")
    lm = clip.portrait_landmarks(r)
    kw = dict(seed=a.seed, crop=False, boxes=(facelib.lip_box(lm), facelib.face_box(lm), lm))
    portrait = clip.portrait(r)
    same = pipe(portrait, clip.audio, emotion=clip.emotion, **kw).frames
    diff = pipe(portrait, clip.audio, emotion=other, **kw).frames
    opening, _ = _measure(same, clip.identity)
    ok = np.isfinite(opening)
    if not ok.any():
        print("no generated frame could be measured (not this identity's face)", file=sys.stderr)
        return 1
    i_closed = int(np.nanargmin(np.where(ok, opening, np.nan)))
    i_open = int(np.nanargmax(np.where(ok, opening, np.nan)))
    i_other = len(diff) // 2
    panels = [(same[i_closed], f"{clip.emotion} f{i_closed} open {opening[i_closed]:.2f} (true {clip.states[i_closed, 0]:.2f})"),
              (same[i_open], f"{clip.emotion} f{i_open} open {opening[i_open]:.2f} (true {clip.states[i_open, 0]:.2f})"),
              (diff[i_other], f"asked: {other} f{i_other}")]
    s = r * a.scale
    sheet = Image.new("RGB", (3 * s, s + 16), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (img, text) in enumerate(panels):
        sheet.paste(Image.fromarray(img).resize((s, s), Image.NEAREST), (k * s, 0))
        draw.text((k * s + 2, s + 2), text, fill="black")
    tmp = a.out + ".tmp.png"
    sheet.save(tmp)
    os.replace(tmp, a.out)
    print(json.dumps({"out": a.out, "clip": clip.name, "emotion": clip.emotion, "other": other,
                      "closed_frame": i_closed, "open_frame": i_open,
                      "measured_opening": [float(opening[i_closed]), float(opening[i_open])],
                      "true_opening": [float(clip.states[i_closed, 0]), float(clip.states[i_open, 0])]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
