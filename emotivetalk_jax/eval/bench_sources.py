"""The emotion a `bench-synthetic` clip is asked for, from each of the four sources (6.3).

Shape legend: F frames, R the bundle's resolution, E expression latent width, K = 8 keywords.

Every source shows the clip's own emotion, but none comes from the clip itself, so the mouth
(the clip's speech) and the emotion come from different inputs:

* `text`: the emotion's keyword;
* `image`: one frame of another held-out identity showing the emotion at full intensity,
  closed mouth, written as a PNG and read through the expression encoder (-> e_cond);
* `video`: another held-out clip (another identity, its own utterance and head motion)
  re-rendered with the emotion at full intensity, written as an mp4 and read frame by frame
  (-> e_v, anchored to the bundle's codebook as the pipeline does, stretched to the clip's frames);
* `audio`: a held-out utterance of the emotion spoken by another voice (a test-split clip of
  another identity), written as a WAV and read by the bundle's speech-emotion head (-> keyword).

The images and videos are passed whole, without face detection, as the bench passes its
portraits (`crop=False`): synthetic frames are already framed like the model's input.
`detail` records how the emotion was chosen: the keyword (text), the nearest codebook row
(image: the latent's nearest keyword mean; video: the mean e_v's, with the intensity and the
identity offset `anchor_to_codebook` found), the head's probabilities (audio).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emotivetalk_jax.data import synthetic_face as sf
from emotivetalk_jax.data.synthetic import SAMPLES_PER_FRAME, Clip, SyntheticDomain
from emotivetalk_jax.data.synthetic_speech import FPS, SR

SOURCES = ("text", "image", "video", "audio")
SOURCE_OFFSET = 20_000  # test-split indices the sources are drawn from (never a bench clip: those are 0..)
_SEARCH = 4096  # test clips searched for an utterance of the emotion by another voice

DESCRIPTION = {
    "text": "the emotion's keyword as text (codebook row)",
    "image": "a frame of another held-out identity at full intensity (expression encoder -> e_cond)",
    "video": "another held-out clip re-rendered at full intensity (expression encoder per frame -> e_v, "
             "anchored to the codebook)",
    "audio": "a held-out utterance of the emotion by another voice (speech-emotion head -> keyword)",
}


def other_clip(domain: SyntheticDomain, clip: Clip, index: int, *, emotion: str | None = None) -> Clip:
    """A test-split clip from `SOURCE_OFFSET + index` on, of another identity (and so another
    voice) than `clip`, speaking `emotion` when given."""
    for j in range(SOURCE_OFFSET + index, SOURCE_OFFSET + index + _SEARCH):
        c = domain.clip(j, "test")
        if c.identity_id != clip.identity_id and (emotion is None or c.emotion == emotion):
            return c
    raise RuntimeError(f"no held-out clip of {emotion or 'any emotion'} by another identity in {_SEARCH} tries")


def source_emotion(pipe, domain: SyntheticDomain, clip: Clip, index: int, kind: str, num_frames: int,
                   folder: Path):
    """(what to pass as `emotion=`, how it was chosen) for bench clip `index` from source `kind`;
    the source files are written under `folder`."""
    from emotivetalk_jax.emotion.sources import EmotionSource, image_condition, nearest_row, video_condition

    r = pipe.resolution
    if kind == "text":
        return clip.emotion, {"kind": "text", "value": clip.emotion, "chosen": clip.emotion, "method": "keyword"}
    if kind == "audio":
        import soundfile

        other = other_clip(domain, clip, index, emotion=clip.emotion)
        path = folder / f"{other.name}.wav"
        soundfile.write(str(path), other.audio, SR, subtype="PCM_16")
        cond = pipe.resolve_emotion(EmotionSource.audio(path), num_frames)
        probs = {k: round(v, 4) for k, v in cond.detail["probs"].items()}
        return cond, {"kind": "audio", "from": other.name, "identity": other.identity_id, "chosen": cond.keyword,
                      "method": "speech-emotion head", "probs": probs}
    other = other_clip(domain, clip, index)
    encoder = pipe.bundle.face_encoders
    if kind == "image":
        from PIL import Image

        state = sf.neutral_state(1)
        state[:, 2:6] = sf.expression(clip.emotion, 1.0)
        path = folder / f"{other.name}_{clip.emotion}.png"
        Image.fromarray(sf.render(other.identity, state, r)[0]).save(path)
        cond = image_condition(path, encoder, detect=False, landmarks=sf.landmarks(other.identity, state[0], r))
        e = cond.e_cond
    elif kind == "video":
        from emotivetalk_jax.data.video import write_mp4

        states = other.states.copy()
        states[:, 2:6] = sf.expression(clip.emotion, np.ones(len(states), np.float32))
        path = folder / f"{other.name}_{clip.emotion}.mp4"
        write_mp4(path, sf.render(other.identity, states, r), FPS,
                  other.audio[: len(states) * SAMPLES_PER_FRAME], SR)
        cond = video_condition(path, encoder, num_frames, fps=pipe.settings.fps, detect=False,
                               codebook=pipe.bundle.codebook,
                               landmarks=np.stack([sf.landmarks(other.identity, s, r) for s in states]))
        a = cond.detail
        return cond, {"kind": kind, "from": other.name, "identity": other.identity_id, "chosen": a["keyword"],
                      "method": "nearest codebook row (mean e_v), anchored", "intensity": a["intensity"],
                      "offset": a["offset"], "distances": a["distances"]}
    else:
        raise ValueError(f"unknown emotion source {kind!r}; choose one of {', '.join(SOURCES)}")
    chosen, distances = nearest_row(pipe.bundle.codebook, e)
    return cond, {"kind": kind, "from": other.name, "identity": other.identity_id, "chosen": chosen,
                  "method": "nearest codebook row", "distances": distances}
