"""The project's own model checkpoints: an orbax state tree + the config that builds the model.

Layout of one component folder:
    config.json   {"format": "emotivetalk_jax", "component": "unet" | "vae" | "audio" | "ethd", "config": {...}}
    state/        orbax checkpoint of the model's `nnx.Param` state (float32 or as saved)
A converted SVD repository is a folder with `unet/` and `vae/` component folders.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx

from emotivetalk_jax.convert.engine import ConversionError, abstract_model

FORMAT = "emotivetalk_jax"


def _builders() -> dict[str, Callable[..., nnx.Module]]:
    from emotivetalk_jax.convert import svd
    from emotivetalk_jax.convert.audio import build_audio_encoder
    from emotivetalk_jax.models.ethd import ETHD
    from emotivetalk_jax.models.ethd_variants import ETHDConfig

    return {
        "unet": lambda cfg, rngs: svd.build("unet", cfg, rngs=rngs),
        "vae": lambda cfg, rngs: svd.build("vae", cfg, rngs=rngs),
        "audio": lambda cfg, rngs: build_audio_encoder(cfg, rngs=rngs),
        "ethd": lambda cfg, rngs: ETHD.from_svd_config(cfg["unet"], ETHDConfig(**cfg["ethd"]), rngs=rngs),
    }


def model_config(model: nnx.Module) -> dict:
    """The JSON config that rebuilds `model` through `_builders`."""
    from emotivetalk_jax.models.ethd import ETHD

    if isinstance(model, ETHD):
        return {"unet": model.config, "ethd": dataclasses.asdict(model.ethd_config)}
    return model.config


def save_model(model: nnx.Module, folder: str | os.PathLike, component: str, config: dict | None = None) -> Path:
    """Write `model` (config + parameters) as an orbax checkpoint folder.

    `config` is what rebuilds the model (default: `model_config(model)`)."""
    folder = Path(folder).absolute()
    if (folder / "state").exists():
        raise FileExistsError(f"{folder} already holds a checkpoint; choose a new output folder or delete it")
    folder.mkdir(parents=True, exist_ok=True)
    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(folder / "state", state)
        ckptr.wait_until_finished()
    meta = {"format": FORMAT, "component": component, "config": model_config(model) if config is None else config}
    (folder / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return folder


def read_meta(folder: str | os.PathLike) -> dict:
    """The config.json of a native checkpoint folder, checked."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise ConversionError(f"{folder} is not an emotivetalk_jax checkpoint (no config.json); run `emotivetalk convert` first")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ConversionError(
            f"{path} is not an emotivetalk_jax checkpoint config (a diffusers or HF folder?); "
            "convert it with `emotivetalk convert` first"
        )
    return meta


def load_model(folder: str | os.PathLike, dtype=None) -> nnx.Module:
    """Rebuild the model saved by `save_model`; parameters cast to `dtype` if given."""
    folder = Path(folder).absolute()
    meta = read_meta(folder)
    builders = _builders()
    if meta["component"] not in builders:
        raise ConversionError(f"{folder}: unknown component {meta['component']!r}; expected one of {sorted(builders)}")
    build = builders[meta["component"]]
    model = abstract_model(lambda: build(meta["config"], nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    target = jax.tree.map(
        lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), nnx.to_pure_dict(params)
    )
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(folder / "state", target)
    if dtype is not None:
        restored = jax.tree.map(lambda a: a.astype(dtype), restored)
    nnx.replace_by_pure_dict(params, restored)
    return nnx.merge(graphdef, params, rest)
