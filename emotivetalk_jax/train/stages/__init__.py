"""The training stages, one module each, every one built by keyword: `build(cfg, *, seed, abstract)`.

- `encoders` (stage 0, 6.1): the face encoders learn by reconstructing a driving frame.
- `audio` (not in the paper): the audio encoder learns to hear lips (the demo's stand-in for
  a pretrained wav2vec2).
- `vaid` (stage 1, eq. 8): V-AID and CLUB against the frozen face encoders.
- `ethd` (stage 2, eq. 11, 6.4): the ETHD backbone under EDM, everything else frozen.
- `vae` (not in the paper): SVD's temporal VAE as an autoencoder, for a domain without one.
- `reader` (not in the paper): an expression reader that stage 2's expression term reads
  through (the demo's stand-in for an action-unit detector).
- `student` (not in the paper): a few-step ETHD distilled from a trained one by consistency
  distillation, guidance folded in (`diffusion.consistency`).

`common` holds the `Stage` record and what the builders share, `frozen` the public builders of
the frozen models a stage conditions on (what `bundle.py` rebuilds), `step` the one step
function of every stage. A fork adds a stage by adding a module with a `build` and a line to
`STAGES`.

Every step takes the raw grain batch (uint8 frames, waveform windows, box masks) and does
all preprocessing inside the same jitted program (frozen encoders under stop_gradient),
so one program runs from a laptop CPU to a pod. Parameters are fp32 master weights; the
forward runs in `compute_dtype`.
"""

from __future__ import annotations

from collections.abc import Callable

from emotivetalk_jax.train.stages import audio, encoders, ethd, reader, student, vae, vaid
from emotivetalk_jax.train.stages.audio import AUDIO_STAGE_FRAMES
from emotivetalk_jax.train.stages.common import (EMA, REMAT_BLOCKS, REMAT_LAYERS, SAMPLES_PER_FRAME, Frozen, Stage,
                                                 audio_frames, audio_windows, to_float_image)
from emotivetalk_jax.train.stages.ethd import ethd_model, motion_typical, stage_ethd_config
from emotivetalk_jax.train.stages.frozen import (audio_encoder, face_encoders, is_workdir, vae_model,
                                                 vae_scaling_factor, vaid_model)
from emotivetalk_jax.train.stages.step import abstract_state, init_state, make_step
from emotivetalk_jax.train.stages.vae import VAE_PARTS

STAGES: dict[str, Callable[..., Stage]] = {"encoders": encoders.build, "audio": audio.build, "vaid": vaid.build,
                                           "ethd": ethd.build, "vae": vae.build,
                                           "reader": reader.build, "student": student.build}


def build_stage(cfg, *, abstract: bool = False) -> Stage:
    """The stage `cfg.stage`; `abstract=True` builds shapes only (nothing allocated or loaded)."""
    if cfg.stage not in STAGES:
        raise ValueError(f"unknown stage {cfg.stage!r}; choose one of {', '.join(STAGES)}")
    return STAGES[cfg.stage](cfg, seed=int(cfg.seed), abstract=abstract)


__all__ = ["AUDIO_STAGE_FRAMES", "EMA", "REMAT_BLOCKS", "REMAT_LAYERS", "SAMPLES_PER_FRAME", "STAGES", "VAE_PARTS",
           "Frozen", "Stage", "abstract_state", "audio_encoder", "audio_frames", "audio_windows", "build_stage",
           "ethd_model", "face_encoders", "init_state", "is_workdir", "make_step", "motion_typical",
           "stage_ethd_config", "to_float_image", "vae_model", "vae_scaling_factor", "vaid_model"]
