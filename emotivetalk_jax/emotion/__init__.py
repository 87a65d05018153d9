"""Multi-source emotion control (MEC, 3.5 and 6.3): one resolver for every emotion source.

    cond = resolve_emotion(EmotionSource.text("make her look thrilled"), codebook=cb)
    if cond.temporal:   # a driving video: per-frame e_v (F, E), Di-CTE is skipped
        ...
    else:               # image / text / audio: one e_cond (E,), expanded over time by Di-CTE
        ...

Sources: `text` (a keyword or free text -> keyword, `text.py`), `image` (a face ->
expression encoder), `audio` (speech -> WavLM + speech-emotion head -> keyword,
`speech.py`), `video` (frames -> expression encoder, anchored to the codebook, stretched to
the audio). Keywords become latents through the emotion-to-expression codebook
(`codebook.py`). Every failure is an `EmotionError` (a ValueError) with a one-line message.
"""

from __future__ import annotations

import os

from emotivetalk_jax.emotion.codebook import Codebook, build_codebook, load_codebook, save_codebook
from emotivetalk_jax.emotion.keywords import KEYWORDS, EmotionError, parse_keyword
from emotivetalk_jax.emotion.sources import (
    EmotionCondition,
    EmotionSource,
    anchor_to_codebook,
    image_condition,
    load_expression_encoder,
    resample_frames,
    save_expression_encoder,
    video_condition,
)
from emotivetalk_jax.emotion.text import TextMatch, text_to_keyword


def _codebook(codebook: Codebook | str | os.PathLike | None, what: str) -> Codebook:
    if codebook is None:
        raise EmotionError(f"{what} emotion needs the emotion-to-expression codebook: pass --codebook DIR "
                           "(build one with `emotivetalk codebook build IMAGES_DIR OUT`)")
    return codebook if isinstance(codebook, Codebook) else load_codebook(codebook)


def _need_encoder(encoder, what: str):
    if encoder is None:
        raise EmotionError(f"{what} emotion needs the expression encoder: pass a trained checkpoint")
    return encoder


def resolve_emotion(
    source: EmotionSource,
    *,
    num_frames: int | None = None,
    expression_encoder=None,
    codebook: Codebook | str | os.PathLike | None = None,
    text_model_dir: str | os.PathLike | None = None,
    endpoint: str | None = None,
    endpoint_model: str = "gpt-4o",
    speech=None,
    fps: float = 25.0,
    detect: bool = True,
) -> EmotionCondition:
    """The condition an emotion source gives (see the module docstring).

    `num_frames`: frames of the generated video (needed for a video source).
    `expression_encoder`: a `FaceEncoders` (image and video sources).
    `codebook`: a `Codebook` or its folder (text and audio sources; a video's e_v is anchored to
    it when given, `sources.anchor_to_codebook`).
    `speech`: a `speech.SpeechEmotionRecognizer` (audio source).
    `text_model_dir` / `endpoint`: see `text.text_to_keyword`.
    """
    if source.kind == "video":
        if num_frames is None:
            raise EmotionError("a video emotion source needs the number of frames to generate")
        book = None if codebook is None else _codebook(codebook, "video")
        return video_condition(source.value, _need_encoder(expression_encoder, "video"), num_frames, fps=fps,
                               detect=detect, codebook=book)
    if source.kind == "image":
        return image_condition(source.value, _need_encoder(expression_encoder, "image"), detect=detect)
    if source.kind == "text":
        book = _codebook(codebook, "text")  # fail before any model loads
        match = text_to_keyword(source.value, model_dir=text_model_dir, endpoint=endpoint,
                                endpoint_model=endpoint_model)
        detail = {"method": match.method}
        if match.scores is not None:
            detail["scores"] = dict(zip(KEYWORDS, match.scores))
        return EmotionCondition("text", e_cond=book.lookup(match.keyword), keyword=match.keyword, detail=detail)
    # audio
    book = _codebook(codebook, "audio")
    if speech is None:
        raise EmotionError("audio emotion needs a speech-emotion head: pass --speech-head DIR "
                           "(train one with `emotivetalk speech-head train OUT`)")
    import warnings

    from emotivetalk_jax import validate
    from emotivetalk_jax.data.audio import AudioError, load_audio

    try:
        with warnings.catch_warnings():  # silence is refused below, not warned about as a closed mouth
            warnings.simplefilter("ignore", validate.InputWarning)
            wave = validate.check_wave(load_audio(source.value), "emotion audio", fps=fps, path=source.value)
    except AudioError as e:
        raise EmotionError(f"emotion audio: {e}" if not str(e).startswith("emotion audio") else str(e)) from None
    validate.check_speech(wave, f"emotion audio {source.value}", error=EmotionError)
    keyword, probs = speech.predict(wave)
    return EmotionCondition("audio", e_cond=book.lookup(keyword), keyword=keyword,
                            detail={"probs": dict(zip(KEYWORDS, (float(p) for p in probs)))})


__all__ = [
    "KEYWORDS",
    "Codebook",
    "EmotionCondition",
    "EmotionError",
    "EmotionSource",
    "TextMatch",
    "anchor_to_codebook",
    "build_codebook",
    "image_condition",
    "load_codebook",
    "load_expression_encoder",
    "parse_keyword",
    "resample_frames",
    "resolve_emotion",
    "save_codebook",
    "save_expression_encoder",
    "text_to_keyword",
    "video_condition",
]
