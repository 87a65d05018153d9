"""The project's own model checkpoints: an orbax state tree + the config that builds the model.

Layout of one component folder:
    config.json   {"format": "emotivetalk_jax", "component": "unet" | "vae" | "audio" | "ethd", "config": {...}}
    state/        orbax checkpoint of the model's `nnx.Param` state (float32 or as saved)
    manifest.json size and sha256 of every file, the component's variant and parameter shapes
                  (`emotivetalk_jax.manifest`)
A converted SVD repository is a folder with `unet/` and `vae/` component folders. A folder is
written whole or not at all (a temporary sibling renamed into place); loading checks the
manifest's sizes (hashes with `verify=True`) and shapes before orbax reads a byte.
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

from emotivetalk_jax import interrupts, manifest
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


def save_model(model: nnx.Module, folder: str | os.PathLike, component: str, config: dict | None = None, *,
               variant: str | None = None) -> Path:
    """Write `model` (config + parameters + manifest) as an orbax checkpoint folder, atomically.

    `config` is what rebuilds the model (default: `model_config(model)`); `variant` is recorded
    in the manifest (a bundle's parts are checked against it when the bundle loads)."""
    folder = Path(folder).absolute()
    if (folder / "state").exists():
        raise FileExistsError(f"{folder} already holds a checkpoint; choose a new output folder or delete it")
    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    meta = {"format": FORMAT, "component": component, "config": model_config(model) if config is None else config}
    with manifest.atomic_folder(folder) as tmp:
        with interrupts.deferred(), ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / "state", state)
            ckptr.wait_until_finished()
        (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        manifest.write_manifest(tmp, {".": manifest.component_entry(component, variant, manifest.model_shapes(model))})
    return folder


def read_meta(folder: str | os.PathLike) -> dict:
    """The config.json of a native checkpoint folder, checked."""
    path = Path(folder) / "config.json"
    if Path(folder).exists() and not Path(folder).is_dir():
        raise ConversionError(f"checkpoint {folder} is a file, not a folder; pass the checkpoint folder")
    if not path.exists():
        raise ConversionError(f"{folder} is not an emotivetalk_jax checkpoint (no config.json); run `emotivetalk convert` first")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConversionError(f"{path} is not readable JSON ({type(e).__name__}); the checkpoint is damaged: "
                              "copy or convert it again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConversionError(
            f"{path} is not an emotivetalk_jax checkpoint config (a diffusers or HF folder?); "
            "convert it with `emotivetalk convert` first"
        )
    return meta


def check_folder(folder: str | os.PathLike, model: nnx.Module | None = None, *, verify: bool = False,
                 notice: bool = True) -> None:
    """A component folder against its manifest: files (sizes; sha256 with `verify`) and, given
    the abstract `model` its config.json builds, the parameter shapes. ConversionError names
    the first problem; a folder without a manifest passes (with a notice if `notice`)."""
    folder = Path(folder)
    try:
        meta = manifest.verify(folder, hashes=verify)
    except manifest.IntegrityError as e:
        raise ConversionError(str(e)) from None
    if meta is None:
        if notice:
            manifest.notice_unverified(folder)
        return
    want = (meta.get("components") or {}).get(".", {}).get("shapes")
    if model is not None and want is not None:
        have = manifest.model_shapes(model)
        if have != want:
            diff = manifest.first_shape_difference(want, have)
            raise ConversionError(f"{folder}: state/ holds other parameter shapes than config.json builds ({diff}); "
                                  "config.json and state/ are from different checkpoints")


def load_model(folder: str | os.PathLike, dtype=None, *, verify: bool = False, check: bool = True) -> nnx.Module:
    """Rebuild the model saved by `save_model`; parameters cast to `dtype` if given. The folder is
    checked against its manifest first (`check_folder`; `check=False` where a bundle's manifest
    already covered it)."""
    folder = Path(folder).absolute()
    meta = read_meta(folder)
    builders = _builders()
    if meta.get("component") not in builders:
        raise ConversionError(f"{folder}: unknown component {meta.get('component')!r}; "
                              f"expected one of {sorted(builders)}")
    build = builders[meta["component"]]
    try:
        model = abstract_model(lambda: build(meta["config"], nnx.Rngs(0)))
    except (KeyError, TypeError, ValueError) as e:
        raise ConversionError(f"{folder / 'config.json'} does not describe a {meta['component']} "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); the checkpoint is "
                              "damaged") from None
    if check:
        check_folder(folder, model, verify=verify)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    target = jax.tree.map(
        lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), nnx.to_pure_dict(params)
    )
    with interrupts.deferred(), ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(folder / "state", target)
    if dtype is not None:
        restored = jax.tree.map(lambda a: a.astype(dtype), restored)
    nnx.replace_by_pure_dict(params, restored)
    return nnx.merge(graphdef, params, rest)
