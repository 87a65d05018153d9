"""The models a stage conditions on, built from their checkpoints (public: `bundle.py` rebuilds
exactly what a stage-2 run trained against through these).

Each takes the training config (its `init.*` paths) and a seed: a configured checkpoint is
loaded, otherwise the model is initialised from the seed (`abstract=True`: shapes only). A
path is a training workdir (its latest checkpoint) or a native component folder (`save_model`:
an export, or a part of a bundle, e.g. `emotivetalk_jax/assets/demo/vae`), so a run can start
from the shipped demo's models without their training workdirs (`load_init`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from flax import nnx

from emotivetalk_jax.train.stages.common import abstract_model, initialised

log = logging.getLogger(__name__)


def _audio_abstract(cfg) -> nnx.Module:
    from emotivetalk_jax.convert.audio import build_audio_encoder

    return build_audio_encoder(cfg.audio_encoder.to_dict(), abstract=True)


def audio_encoder(cfg, seed: int, *, abstract: bool = False) -> nnx.Module:
    """The audio encoder of `cfg.init.audio`: an `audio`-stage workdir, a converted
    (`emotivetalk convert audio`) or Hugging Face folder; random when unset."""
    from emotivetalk_jax.convert.audio import load_hf_audio_encoder

    if cfg.init.audio:
        from emotivetalk_jax.convert import native

        path = cfg.init.audio
        if is_workdir(path):
            return from_workdir(path, _audio_abstract(cfg), "encoder")
        try:
            return native.load_model(path)
        except Exception:  # not a native folder: a Hugging Face one
            return load_hf_audio_encoder(path)
    log.info("no audio encoder checkpoint configured (init.audio): random %s-wide wav2vec2",
             cfg.audio_encoder.hidden_size)
    return initialised(_audio_abstract(cfg), seed, abstract)


def from_workdir(path: str, abstract: nnx.Module, subtree: str | None = None) -> nnx.Module:
    """Fill `abstract` from the latest training checkpoint in `path` (its params + rest)."""
    from emotivetalk_jax.convert.engine import fill_from_arrays
    from emotivetalk_jax.train.checkpoint import restore_model_arrays

    return fill_from_arrays(abstract, restore_model_arrays(path), path, subtree=subtree)


def is_workdir(path) -> bool:
    """True for a training workdir (it has checkpoints/), False for a native component folder."""
    return (Path(path) / "checkpoints").is_dir()


def load_init(path: str, abstract: nnx.Module, component: str, subtree: str | None = None) -> nnx.Module:
    """`abstract` filled from `path`: a training workdir (its latest checkpoint; `subtree` the
    model's place in the stage's model) or a native `component` folder (strict: the folder's
    arrays must have exactly `abstract`'s paths and shapes, so a part of another variant is refused)."""
    if is_workdir(path):
        return from_workdir(path, abstract, subtree)
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"{path} is neither a training workdir (checkpoints/) nor a native {component} "
                                "folder (config.json + state/)")
    from emotivetalk_jax.convert import native
    from emotivetalk_jax.convert.engine import fill_from_arrays
    from emotivetalk_jax.sharding import path_str

    loaded = native.load_model(path, component=component)
    arrays = {path_str(p): np.asarray(v.value) for p, v in nnx.to_flat_state(nnx.state(loaded))}
    model = fill_from_arrays(abstract, arrays, f"{path} ({component})")
    if component == "vae":
        model.config = dict(loaded.config)  # with the scaling factor it was exported with
    return model


def face_config(cfg, variant):
    """The `FaceEncoderConfig` of `cfg.init.face_encoders`: the variant's, with `aligned` as that
    checkpoint was trained (a stage-0 workdir's `face_aligned`, a native folder's config; neither
    says so before issue 30: off); with no checkpoint, `cfg.face_aligned` (stage 0's own setting)."""
    import dataclasses
    import json

    path = cfg.init.get("face_encoders", "") if "init" in cfg else ""
    if not path:
        aligned = bool(cfg.get("face_aligned", False))
    elif is_workdir(path):
        aligned = bool(workdir_config(path).get("face_aligned", False))
    else:
        try:
            aligned = bool(json.loads((Path(path) / "config.json").read_text())["config"].get("aligned", False))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            aligned = False  # load_init names what is wrong with the folder
    return dataclasses.replace(variant.face, aligned=aligned)


def workdir_config(workdir: str) -> dict:
    """The config JSON saved with the latest checkpoint of a training workdir ({} when none)."""
    import orbax.checkpoint as ocp

    mngr = ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", item_names=("config",),
                                 item_handlers={"config": ocp.JsonCheckpointHandler()})
    try:
        step = mngr.latest_step()
        if step is None:
            return {}
        return dict(mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])
    finally:
        mngr.close()


def face_encoders(cfg, variant, seed: int, *, abstract: bool = False) -> nnx.Module:
    """The face encoders of `cfg.init.face_encoders` (a stage-0 workdir or a native face_encoders
    folder; aligned or not as it was trained, `face_config`); random when unset."""
    from emotivetalk_jax.models.face_encoders import FaceEncoders

    face = face_config(cfg, variant)
    model = abstract_model(lambda: FaceEncoders(face, rngs=nnx.Rngs(0)))
    if cfg.init.face_encoders:
        return load_init(cfg.init.face_encoders, model, "face_encoders", "encoders")
    log.info("no stage-0 workdir configured (init.face_encoders): random face encoders")
    return initialised(model, seed, abstract)


def vaid_model(cfg, variant, seed: int, *, abstract: bool = False) -> nnx.Module:
    """V-AID from `cfg.init.vaid` (a stage-1 workdir or a native vaid folder); random when unset."""
    from emotivetalk_jax.models.vaid import VAID

    model = abstract_model(lambda: VAID(variant, rngs=nnx.Rngs(0)))
    if cfg.init.vaid:
        return load_init(cfg.init.vaid, model, "vaid")
    log.info("no stage-1 workdir configured (init.vaid): random V-AID")
    return initialised(model, seed, abstract)


def vae_abstract(variant) -> nnx.Module:
    """SVD's temporal VAE of an ETHD variant, shapes only."""
    from emotivetalk_jax.convert import svd

    return abstract_model(lambda: svd.build("vae", dict(variant.svd.vae), rngs=nnx.Rngs(0)))


def vae_model(cfg, variant, seed: int, *, abstract: bool = False) -> nnx.Module:
    """The VAE of `cfg.init.vae` (a `vae`-stage workdir, with its measured scaling factor, or a
    native vae folder, with its saved one) or `cfg.init.svd` (a diffusers SVD folder); random
    when neither is set."""
    from emotivetalk_jax.convert import svd

    model = vae_abstract(variant)
    if cfg.init.get("vae"):
        if not is_workdir(cfg.init.vae):
            return load_init(cfg.init.vae, model, "vae")
        vae = from_workdir(cfg.init.vae, model)
        vae.config = {**vae.config, "scaling_factor": vae_scaling_factor(cfg.init.vae)}
        return vae
    if cfg.init.svd:
        return svd.load_diffusers_vae(cfg.init.svd)
    log.info("no VAE configured (init.vae / init.svd): random VAE")
    return initialised(model, seed, abstract)


def vae_scaling_factor(workdir: str, rows: int = 20) -> float:
    """1 / the latent std a `vae`-stage run logged over its last `rows` logged steps: SVD's
    `scaling_factor` (0.18215 for its own VAE) for a VAE trained here, so that stage 2's
    scaled latents have unit variance whatever the KL weight let the latents drift to."""
    import json

    path = Path(workdir) / "metrics.jsonl"
    try:
        stds = [json.loads(line)["latent_std"] for line in path.read_text().splitlines() if "latent_std" in line]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: cannot read the VAE run's latent_std ({e}); is {workdir} a `vae`-stage workdir?")
    if not stds:
        raise ValueError(f"{path} logs no latent_std; is {workdir} a `vae`-stage workdir?")
    return float(1.0 / np.mean(stds[-rows:]))


def expression_reader(cfg, size: int, *, abstract: bool = False) -> nnx.Module:
    """The `ExpressionReader` of `cfg.init.expression_reader` (a stage-`reader` workdir) for
    frames of `size`; shapes only with `abstract=True`."""
    from emotivetalk_jax.train.stages.reader import reader_abstract

    model = reader_abstract(size)
    if abstract:
        return model
    if not is_workdir(cfg.init.expression_reader):
        raise ValueError(f"init.expression_reader={cfg.init.expression_reader!r} is not a training workdir "
                         "(no checkpoints/); pass the workdir of a stage-reader run")
    return from_workdir(cfg.init.expression_reader, model)
