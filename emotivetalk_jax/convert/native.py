"""The project's own model checkpoints: an orbax state tree + the config that builds the model.

Layout of one component folder:
    config.json   {"format": "emotivetalk_jax", "component": one of `COMPONENTS`, "config": {...}}
    state/        orbax checkpoint of the model's `nnx.Param` state (float32 or as saved)
    manifest.json size and sha256 of every file, the component's variant and parameter shapes
                  (`emotivetalk_jax.manifest`)
A converted SVD repository is a folder with `unet/` and `vae/` component folders. A folder is
written whole or not at all (a temporary sibling renamed into place); loading checks the
manifest's sizes (hashes with `verify=True`) and shapes before orbax reads a byte.

`COMPONENTS` is the one registry of the checkpointed parts (UNet, VAE, audio encoder, ETHD,
V-AID, face encoders): how a config builds each and how a model gives back its config.
Every part saves with `save_model` and loads with `load_model`; nothing else calls orbax on
a component folder.
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
from emotivetalk_jax.convert import svd
from emotivetalk_jax.convert.audio import build_audio_encoder
from emotivetalk_jax.convert.engine import ConversionError, abstract_model
from emotivetalk_jax.models.ethd import ETHD
from emotivetalk_jax.models.ethd_variants import ETHDConfig
from emotivetalk_jax.models.face_encoders import FaceEncoders
from emotivetalk_jax.models.vaid import VAID
from emotivetalk_jax.models.vaid_variants import (
    CLUBConfig,
    DecoderConfig,
    DiCTEConfig,
    FaceEncoderConfig,
    LossConfig,
    PerceiverConfig,
    VAIDVariant,
)

FORMAT = "emotivetalk_jax"


def _tuples(d: dict) -> dict:
    """JSON lists back to the tuples of a config dataclass."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def vaid_variant_from_dict(d: dict) -> VAIDVariant:
    """The `VAIDVariant` that `dataclasses.asdict` wrote (a V-AID checkpoint's config)."""
    return VAIDVariant(
        d["name"], PerceiverConfig(**_tuples(d["perceiver"])), DiCTEConfig(**_tuples(d["dicte"])),
        CLUBConfig(**_tuples(d["club"])), FaceEncoderConfig(**_tuples(d["face"])),
        DecoderConfig(**_tuples(d["decoder"])), LossConfig(**_tuples(d["loss"])),
    )


@dataclasses.dataclass(frozen=True)
class Component:
    """How a checkpointed part is rebuilt: `build(config, rngs)` and `config(model)` (JSON)."""

    build: Callable[[dict, nnx.Rngs], nnx.Module]
    config: Callable[[nnx.Module], dict]


COMPONENTS: dict[str, Component] = {
    "unet": Component(lambda cfg, rngs: svd.build("unet", cfg, rngs=rngs), lambda m: m.config),
    "vae": Component(lambda cfg, rngs: svd.build("vae", cfg, rngs=rngs), lambda m: m.config),
    "audio": Component(lambda cfg, rngs: build_audio_encoder(cfg, rngs=rngs), lambda m: m.config),
    "ethd": Component(lambda cfg, rngs: ETHD.from_svd_config(cfg["unet"], ETHDConfig(**cfg["ethd"]), rngs=rngs),
                      lambda m: {"unet": m.config, "ethd": dataclasses.asdict(m.ethd_config)}),
    "vaid": Component(lambda cfg, rngs: VAID(vaid_variant_from_dict(cfg), rngs=rngs),
                      lambda m: dataclasses.asdict(m.variant)),
    "face_encoders": Component(lambda cfg, rngs: FaceEncoders(FaceEncoderConfig(**_tuples(cfg)), rngs=rngs),
                               lambda m: dataclasses.asdict(m.cfg)),
}


def save_model(model: nnx.Module, folder: str | os.PathLike, component: str, config: dict | None = None, *,
               variant: str | None = None) -> Path:
    """Write `model` (config + parameters + manifest) as an orbax checkpoint folder, atomically.

    `component` is one of `COMPONENTS`; `config` is what rebuilds the model (default: the
    component's own); `variant` is recorded in the manifest (a bundle's parts are checked
    against it when the bundle loads)."""
    if component not in COMPONENTS:
        raise ConversionError(f"unknown component {component!r}; expected one of {sorted(COMPONENTS)}")
    folder = Path(folder).absolute()
    if (folder / "state").exists():
        raise FileExistsError(f"{folder} already holds a checkpoint; choose a new output folder or delete it")
    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    config = COMPONENTS[component].config(model) if config is None else config
    meta = {"format": FORMAT, "component": component, "config": config}
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


def load_model(folder: str | os.PathLike, dtype=None, *, verify: bool = False, check: bool = True,
               component: str | None = None) -> nnx.Module:
    """Rebuild the model saved by `save_model`; parameters cast to `dtype` if given. The folder is
    checked against its manifest first (`check_folder`; `check=False` where a bundle's manifest
    already covered it). `component`: the part expected (ConversionError if it holds another)."""
    folder = Path(folder).absolute()
    meta = read_meta(folder)
    if meta.get("component") not in COMPONENTS:
        raise ConversionError(f"{folder}: unknown component {meta.get('component')!r}; "
                              f"expected one of {sorted(COMPONENTS)}")
    if component is not None and meta["component"] != component:
        raise ConversionError(f"{folder} holds component {meta['component']!r}, not {component!r}")
    build = COMPONENTS[meta["component"]].build
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
