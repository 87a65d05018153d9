"""Audio -> emotion keyword (6.3): a frozen WavLM and a small trainable speech-emotion head.

Shape legend: N clips, S samples (16 kHz), T encoder frames, D encoder width, F feature
width (2 D for mean+std pooling, 12 for prosody, 45 (or 29) for voice), K = 8 keywords.

The paper's head is "the audio branch of a state-of-the-art multimodal emotion recognition
model", unnamed; ours is an MLP over an utterance feature:
- `feature="wavlm"`: one WavLM hidden layer (`layer`, default the last), pooled over time
  (`pooling="mean"` or `"mean_std"`, the mean and standard deviation over frames);
- `feature="prosody"`: the 12 prosody statistics of `data/measure.py` (F0, energy, rate,
  spectral tilt), no encoder needed; a cheap alternative for the synthetic domain;
- `feature="voice"`: those 12 and 33 statistics of `voice_features.py` (pitch range and
  movement in semitones, tremor, phrase-final rise or fall, loudness, rhythm and tempo,
  breathiness, the vocal tract's length), no encoder needed: what the demo ships (the demo's
  32-wide audio encoder, trained to hear lips, carries little of the emotion).
Features are standardised with the training set's statistics, which the head stores.
No pretrained head or WavLM weights exist offline: `train_speech_emotion_head` trains one
with optax on labelled clips (e.g. `synthetic_speech_dataset`). A head is saved as
`speech_head.safetensors` + `speech_head.json` (no pickle).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from emotivetalk_jax.emotion.keywords import KEYWORDS, EmotionError
from emotivetalk_jax.models.wav2vec2 import conv_geometry

FEATURES = ("wavlm", "prosody", "voice")
POOLINGS = ("mean", "mean_std")


@dataclasses.dataclass(frozen=True)
class SpeechHeadConfig:
    in_dim: int
    hidden: int = 128
    feature: str = "wavlm"
    layer: int = -1  # WavLM hidden state (0 = encoder input, -1 = last layer)
    pooling: str = "mean_std"
    encoder_width: int | None = None  # WavLM hidden size the head was trained on (checked at load)

    def __post_init__(self):
        if self.feature not in FEATURES:
            raise EmotionError(f"speech feature {self.feature!r}; expected one of {', '.join(FEATURES)}")
        if self.pooling not in POOLINGS:
            raise EmotionError(f"speech pooling {self.pooling!r}; expected one of {', '.join(POOLINGS)}")


class FeatureStat(nnx.Variable):
    """Feature standardisation statistics: saved with the head, never trained."""


class SpeechEmotionHead(nnx.Module):
    """(N, F) utterance features -> (N, K) logits: standardise -> Linear -> GELU -> Linear."""

    def __init__(self, cfg: SpeechHeadConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.feature_mean = FeatureStat(jnp.zeros((cfg.in_dim,)))
        self.feature_std = FeatureStat(jnp.ones((cfg.in_dim,)))
        self.fc1 = nnx.Linear(cfg.in_dim, cfg.hidden, rngs=rngs)
        self.fc2 = nnx.Linear(cfg.hidden, len(KEYWORDS), rngs=rngs)

    def __call__(self, features: jax.Array) -> jax.Array:
        x = (features - self.feature_mean[...]) / self.feature_std[...]
        return self.fc2(jax.nn.gelu(self.fc1(x)))


# ----------------------------------------------------------------------------- features


def pool_frames(frames: np.ndarray, pooling: str = "mean_std") -> np.ndarray:
    """(T, D) -> (D,) mean, or (2 D,) mean and standard deviation over time."""
    frames = np.asarray(frames, np.float32)
    if pooling == "mean":
        return frames.mean(0)
    return np.concatenate([frames.mean(0), frames.std(0)])


_BUCKET = 8000  # samples: waveforms are zero-padded to a multiple of 0.5 s, so few shapes compile
MAX_SECONDS = 20.0  # longer audio is centre-cropped to this before encoding


@functools.lru_cache(maxsize=4)
def _encoder_fn(encoder, layer: int):
    graphdef, state = nnx.split(encoder)

    @jax.jit
    def run(st, wave, mask):
        hidden = nnx.merge(graphdef, st)(wave, mask)[layer]  # (1, T, D)
        t = hidden.shape[1]
        n = encoder.feature_lengths(mask.sum(-1))  # (1,)
        valid = (jnp.arange(t)[None] < n[:, None]).astype(hidden.dtype)[..., None]
        return hidden, valid

    return lambda wave, mask: run(state, wave, mask)


def wavlm_feature(model, wave: np.ndarray, layer: int = -1, pooling: str = "mean_std",
                  sr: int = 16000) -> np.ndarray:
    """(S,) 16 kHz waveform -> WavLM (or wav2vec2) hidden layer `layer`, pooled over valid frames.

    The waveform is normalised, centre-cropped to `MAX_SECONDS` and zero-padded to a
    multiple of 0.5 s (with an attention mask), so the encoder compiles once per length
    bucket; for group-norm conv stacks the padding slightly changes the first layer's
    statistics, identically in training and at inference.
    """
    from emotivetalk_jax.data.audio import normalize

    wave = np.asarray(wave, np.float32).reshape(-1)
    _, field = conv_geometry(model.config)
    if wave.size < field:
        raise EmotionError(f"emotion audio has {wave.size} samples; at least {field} ({field / sr * 1000:.0f} ms) needed")
    limit = int(MAX_SECONDS * sr)
    if wave.size > limit:
        start = (wave.size - limit) // 2
        wave = wave[start : start + limit]
    n = -(-wave.size // _BUCKET) * _BUCKET
    padded = np.zeros((1, n), np.float32)
    padded[0, : wave.size] = normalize(wave)
    mask = np.zeros((1, n), np.int32)
    mask[0, : wave.size] = 1
    hidden, valid = _encoder_fn(model, int(layer))(padded, mask)
    frames = np.asarray(hidden)[0][np.asarray(valid)[0, :, 0] > 0]
    return pool_frames(frames, pooling)


def prosody_feature(wave: np.ndarray) -> np.ndarray:
    from emotivetalk_jax.data.measure import prosody_features

    return prosody_features(np.asarray(wave, np.float32))


def voice_feature(wave: np.ndarray) -> np.ndarray:
    from emotivetalk_jax.emotion.voice_features import voice_features

    return voice_features(np.asarray(wave, np.float32))


def feature_fn(cfg: SpeechHeadConfig, encoder=None) -> Callable[[np.ndarray], np.ndarray]:
    """The waveform -> feature function a head of this config was trained with."""
    if cfg.feature == "prosody":
        return prosody_feature
    if cfg.feature == "voice":
        from emotivetalk_jax.emotion.voice_features import VOICE_WIDTHS

        if cfg.in_dim not in VOICE_WIDTHS:
            raise EmotionError(f"a voice-statistics head reads {' or '.join(map(str, VOICE_WIDTHS))} statistics, this one "
                               f"{cfg.in_dim}; retrain it (emotivetalk speech-head train OUT)")
        return voice_feature if cfg.in_dim == VOICE_WIDTHS[-1] else (lambda wave: voice_feature(wave)[: cfg.in_dim])
    if encoder is None:
        raise EmotionError("this speech-emotion head reads WavLM features; pass the WavLM encoder (--wavlm DIR)")
    width = int(encoder.config["hidden_size"])
    if cfg.encoder_width is not None and width != cfg.encoder_width:
        raise EmotionError(f"the speech-emotion head was trained on a {cfg.encoder_width}-wide encoder, "
                           f"this one is {width} wide; pass the WavLM it was trained with")
    return lambda wave: wavlm_feature(encoder, wave, cfg.layer, cfg.pooling)


def synthetic_speech_dataset(num_clips: int, split: str = "train", seed: int = 0, *, min_seconds: float = 2.0,
                             max_seconds: float = 3.0) -> tuple[list[np.ndarray], np.ndarray]:
    """Waveforms and keyword indices (`KEYWORDS` order) of synthetic clips (`data/synthetic.py`)."""
    from emotivetalk_jax.data.synthetic import SynthConfig, SyntheticDomain

    domain = SyntheticDomain(seed, SynthConfig(min_seconds=min_seconds, max_seconds=max_seconds))
    clips = [domain.clip(i, split) for i in range(num_clips)]
    return [c.audio for c in clips], np.array([KEYWORDS.index(c.emotion) for c in clips], np.int32)


# ----------------------------------------------------------------------------- training


def train_speech_emotion_head(features: np.ndarray, labels: np.ndarray, cfg: SpeechHeadConfig | None = None, *,
                              steps: int = 500, learning_rate: float = 3e-3, weight_decay: float = 1e-2,
                              seed: int = 0, eval_every: int = 0,
                              on_eval: Callable[[int, SpeechEmotionHead], None] | None = None) -> SpeechEmotionHead:
    """Fit a head on (N, F) features and (N,) keyword indices: full-batch AdamW, cross-entropy.
    `on_eval(step, head)` runs every `eval_every` steps and after the last."""
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels, np.int32)
    if features.ndim != 2 or len(features) != len(labels) or len(labels) < 2:
        raise EmotionError(f"need (N, F) features and N labels with N >= 2, got {features.shape} and {labels.shape}")
    cfg = cfg or SpeechHeadConfig(in_dim=features.shape[1])
    if cfg.in_dim != features.shape[1]:
        cfg = dataclasses.replace(cfg, in_dim=features.shape[1])
    head = SpeechEmotionHead(cfg, rngs=nnx.Rngs(seed))
    head.feature_mean[...] = jnp.asarray(features.mean(0))
    head.feature_std[...] = jnp.asarray(features.std(0) + 1e-5)
    opt = nnx.Optimizer(head, optax.adamw(learning_rate, weight_decay=weight_decay), wrt=nnx.Param)
    x, y = jnp.asarray(features), jnp.asarray(labels)

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    for i in range(1, steps + 1):
        step(head, opt)
        if on_eval is not None and ((eval_every and i % eval_every == 0) or i == steps):
            on_eval(i, head)
    return head


def predict_keywords(head: SpeechEmotionHead, features: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(N, F) features -> keywords and (N, K) probabilities."""
    probs = np.asarray(jax.nn.softmax(head(jnp.asarray(features, jnp.float32)), -1))
    return [KEYWORDS[i] for i in probs.argmax(-1)], probs


def accuracy(head: SpeechEmotionHead, features: np.ndarray, labels: np.ndarray) -> float:
    _, probs = predict_keywords(head, features)
    return float((probs.argmax(-1) == np.asarray(labels)).mean())


@dataclasses.dataclass
class SpeechEmotionRecognizer:
    """Waveform -> keyword: the head plus the feature extractor it was trained with."""

    head: SpeechEmotionHead
    features: Callable[[np.ndarray], np.ndarray]

    def predict(self, wave: np.ndarray) -> tuple[str, np.ndarray]:
        kws, probs = predict_keywords(self.head, self.features(wave)[None])
        return kws[0], probs[0]


# ----------------------------------------------------------------------------- disk


def save_speech_head(head: SpeechEmotionHead, out: str | os.PathLike) -> Path:
    """`out/speech_head.safetensors` (parameters and feature statistics) + `out/speech_head.json`."""
    from safetensors.numpy import save_file

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    flat = nnx.to_flat_state(nnx.state(head, nnx.Any(nnx.Param, FeatureStat)))
    tensors = {".".join(str(p) for p in path): np.asarray(v.value, np.float32) for path, v in flat}
    tmp = folder / "speech_head.safetensors.tmp"
    save_file(tensors, str(tmp))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # the temporary file's private mode is not the folder's usual one
    os.replace(tmp, folder / "speech_head.safetensors")
    meta = {"keywords": list(KEYWORDS), "config": dataclasses.asdict(head.cfg)}
    (folder / "speech_head.json").write_text(json.dumps(meta, indent=1) + "\n")
    return folder


def load_speech_head(path: str | os.PathLike) -> SpeechEmotionHead:
    """A head saved by `save_speech_head` (folder or its .safetensors file)."""
    from safetensors.numpy import load_file

    p = Path(path)
    folder = p.parent if p.suffix == ".safetensors" else p
    if not (folder / "speech_head.json").is_file() or not (folder / "speech_head.safetensors").is_file():
        raise EmotionError(f"no speech-emotion head at {p} (speech_head.json + speech_head.safetensors); train one "
                           "with `emotivetalk speech-head train OUT`")
    meta = json.loads((folder / "speech_head.json").read_text())
    if meta.get("keywords") != list(KEYWORDS):
        raise EmotionError(f"{folder / 'speech_head.json'} lists keywords {meta.get('keywords')}; expected {list(KEYWORDS)}")
    cfg = SpeechHeadConfig(**meta["config"])
    from emotivetalk_jax.convert.engine import ConversionError, fill_from_arrays

    weights = folder / "speech_head.safetensors"
    try:
        return fill_from_arrays(nnx.eval_shape(lambda: SpeechEmotionHead(cfg, rngs=nnx.Rngs(0))),
                                load_file(str(weights)), str(weights))
    except ConversionError as e:
        raise EmotionError(f"{e}; re-save the head") from None


def load_speech_recognizer(head_path: str | os.PathLike, encoder=None) -> SpeechEmotionRecognizer:
    """Head from disk + its feature extractor (`encoder`: the WavLM for `feature="wavlm"`)."""
    head = load_speech_head(head_path)
    return SpeechEmotionRecognizer(head, feature_fn(head.cfg, encoder))


def extract_features(waves: Sequence[np.ndarray], fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return np.stack([fn(w) for w in waves]).astype(np.float32)
