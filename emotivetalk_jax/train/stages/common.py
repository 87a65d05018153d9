"""What every stage shares: the `Stage` record, the frozen-model holder, the step's input
helpers, and the split of a stage's model into update groups (with rematerialisation).

Shape legend: B batch, F frames, S image size, N = F + 2 c audio frames (c context frames
each side), W = 2 c + 1 audio window, D widths.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from emotivetalk_jax.train.state import host_init, rematerialise

log = logging.getLogger(__name__)

SAMPLES_PER_FRAME = 640  # 16 kHz audio, 25 fps video
EMA = "ema"  # TrainState.params key of the moving average (not an update group)

# Class names rematerialised by `remat=blocks` (per stage model).
REMAT_BLOCKS = {
    "ethd": ("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal", "UNetMidBlockSpatioTemporal",
             "UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    "vaid": ("TransformerBlock", "PerceiverBlock"),
    "encoders": ("ResBlock",),
    "vae": ("DownEncoderBlock2D", "UNetMidBlock2D", "MidBlockTemporalDecoder", "UpBlockTemporalDecoder"),
    "audio": ("EncoderLayer",),
    "reader": ("ResBlock",),
}
REMAT_LAYERS = {  # `remat=layers`: finer, every resnet / transformer
    "ethd": ("SpatioTemporalResBlock", "ETHDTransformer"),
    "vaid": ("TransformerBlock", "PerceiverBlock"),
    "encoders": ("ResBlock",),
    "vae": ("ResnetBlock2D", "SpatioTemporalResBlock"),
    "audio": ("EncoderLayer",),
    "reader": ("ResBlock",),
}


class Frozen(nnx.Module):
    """The frozen conditioning models of a stage (any may be None)."""

    def __init__(self, audio=None, face=None, vaid=None, vae=None, reader=None, teacher=None):
        self.audio, self.face, self.vaid, self.vae, self.reader = audio, face, vaid, vae, reader
        self.teacher = teacher  # stage `student`: the frozen ETHD it distils


@dataclasses.dataclass(kw_only=True)
class Stage:
    """A stage's models, update groups and data needs (built by `build_stage`)."""

    name: str
    graphdef: Any
    groups: tuple[str, ...]
    init_params: dict[str, Any]
    init_rest: Any
    frozen_graphdef: Any
    frozen_state: Any
    losses: dict[str, Callable]  # group -> fn(model, inputs, key, prev_aux) -> (loss, aux)
    prepare: Callable  # (frozen, batch, key) -> inputs
    data: dict  # frames, size, mask_sizes, audio_context
    model_name: str = ""
    sample: Callable | None = None  # (model, frozen, inputs) -> video frames in [-1, 1]
    # The frozen audio encoder whose whole-utterance features the loader slices into the
    # batch (`frame_features`, `data.audio_cache`); None: the stage reads no cached features.
    audio_encoder: nnx.Module | None = None
    gate: Callable | None = None  # (model, frozen) -> {"gate/...": float}, host-side (`train.gates`)
    # Frozen-model outputs the loader computes once per clip and cuts into the batch
    # (`frozen_<name>`, `data.frozen_cache`); None: `prepare` computes them every step.
    frozen_outputs: Any = None
    # (rest, frozen, batches) -> rest: fixed data statistics set once, from the first
    # `cfg.calibrate_batches` batches, when a run starts from step 0 (not on resume).
    calibrate: Callable | None = None
    # (parameter path names) -> learning-rate multiplier of that parameter; None: one rate.
    lr_scale: Callable | None = None
    # True: every loss also gets the frozen models, fn(model, inputs, key, prev_aux, frozen)
    # (a loss that decodes or encodes its own prediction: stage 2's `expression_loss_weight`).
    loss_reads_frozen: bool = False
    # True: every loss also gets the target model after the frozen models, fn(model, inputs, key,
    # prev_aux, frozen, target): the first group's EMA (its current weights without an EMA), under
    # stop_gradient (stage `student`'s consistency target).
    loss_reads_target: bool = False

    def model(self, params: dict, rest: Any) -> nnx.Module:
        return nnx.merge(self.graphdef, *(params[g] for g in self.groups), rest)


# ----------------------------------------------------------------------------- inputs


def to_float_image(x: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return x.astype(jnp.float32) / 127.5 - 1.0


def audio_frames(encoder: nnx.Module, wave: jax.Array, num_frames: int) -> jax.Array:
    """Waveform (B, 640 N) -> per-video-frame features (B, N, D): the encoder's last hidden
    state (padded by field - stride samples so that N frames have 2 N features), interpolated
    at each frame's centre exactly as at inference (`data.audio.features_to_frames`).
    The waveform is normalised over the training window (inference: over the utterance)."""
    from emotivetalk_jax.data.audio import features_to_frames
    from emotivetalk_jax.models.wav2vec2 import conv_geometry

    stride, field = conv_geometry(encoder.config)
    wave = wave.astype(jnp.float32)
    wave = (wave - wave.mean(-1, keepdims=True)) / jnp.sqrt(wave.var(-1, keepdims=True) + 1e-7)
    wave = jnp.pad(wave, ((0, 0), (0, field - stride)))
    return features_to_frames(encoder(wave)[-1], num_frames, stride=stride, field=field)


def audio_windows(feats: jax.Array, frames: int, context: int) -> jax.Array:
    """(B, F + 2 c, D) -> A_w (B, F, 2 c + 1, D): the window centred on each video frame."""
    idx = np.arange(frames)[:, None] + np.arange(2 * context + 1)[None, :]
    return feats[:, idx]


def batch_windows(batch: dict, frames: int, context: int) -> jax.Array:
    """A_w (B, F, W, D) from the loader's `frame_features` rows (the pipeline's own features)."""
    return audio_windows(batch["frame_features"], frames, context)


# ----------------------------------------------------------------------------- model building


def abstract_model(factory: Callable[[], nnx.Module]) -> nnx.Module:
    """The model `factory` builds, shapes only (nothing allocated)."""
    return nnx.eval_shape(factory)


def initialised(model: nnx.Module, seed: int, abstract: bool) -> nnx.Module:
    """An abstract `model` initialised on the host from `seed`; as it is with `abstract=True`
    (`build_stage(abstract=True)`: ahead-of-time compiles of full-size stages)."""
    return model if abstract else host_init(model, seed)


def remat_names(cfg, stage: str) -> tuple[str, ...]:
    """The class names `cfg.remat` rematerialises in `stage`'s model."""
    r = (cfg.remat or "none").strip()
    if r == "none":
        return ()
    if r == "blocks":
        return REMAT_BLOCKS[stage]
    if r == "layers":
        return REMAT_LAYERS[stage]
    return tuple(n.strip() for n in r.split(",") if n.strip())


def split_model(model: nnx.Module, groups: dict[str, Any], stage: str, cfg) -> tuple:
    """(graphdef, {group: params}, rest) of the stage's trained model, rematerialised as `cfg.remat` says."""
    model, n = rematerialise(model, remat_names(cfg, stage), cfg.remat_policy)
    if n:
        log.info("rematerialising %d modules (%s)", n, cfg.remat)
    graphdef, *states = nnx.split(model, *groups.values(), ...)
    params = {g: s.to_pure_dict() for g, s in zip(groups, states[:-1])}
    return graphdef, params, states[-1].to_pure_dict()


def split_frozen(frozen: Frozen) -> tuple:
    graphdef, state = nnx.split(frozen)
    return graphdef, state.to_pure_dict()

