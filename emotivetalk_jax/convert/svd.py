"""Stable Video Diffusion (diffusers) <-> NNX: the UNet and the temporal VAE.

NNX paths equal diffusers' state-dict paths, so the table only renames leaves and
changes layouts. A diffusers directory is `config.json` + `diffusion_pytorch_model.safetensors`
(or a sharded index); the SVD repository root with `unet/` and `vae/` works too.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.convert import io
from emotivetalk_jax.convert.engine import COMMON_RULES, Rule, abstract_model, export_tensors, load_into

SVD_RULES: tuple[Rule, ...] = (Rule("*.mix_factor", "*.mix_factor"),) + COMMON_RULES

STEM = "diffusion_pytorch_model"
UNET_CLASSES = ("UNetSpatioTemporalConditionModel",)
VAE_CLASSES = ("AutoencoderKLTemporalDecoder",)


def _unet_cls():
    from emotivetalk_jax.models.unet import UNetSpatioTemporal

    return UNetSpatioTemporal


def _vae_cls():
    from emotivetalk_jax.models.vae import AutoencoderKLTemporalDecoder

    return AutoencoderKLTemporalDecoder


def _load(path, subfolder: str, classes: tuple[str, ...], cls, dtype, progress=None) -> nnx.Module:
    folder = io.resolve_component(path, subfolder, STEM)
    config = io.read_config(folder)
    io.check_class(config, classes, folder)
    # Fail on a wrong config before reading gigabytes of weights.
    model = abstract_model(lambda: cls.from_diffusers_config(config, rngs=nnx.Rngs(0)))
    tensors = io.read_weights(folder, STEM)
    return load_into(model, tensors, SVD_RULES, dtype=dtype, what=str(folder), progress=progress)


def load_diffusers_unet(path: str | os.PathLike, dtype=None, *, progress=None) -> nnx.Module:
    """A ready `UNetSpatioTemporal` from a diffusers UNet folder or an SVD repository root.

    `dtype` casts the parameters (e.g. `jnp.bfloat16`); default keeps float32.
    `progress` wraps the parameter list (e.g. `tqdm.tqdm`).
    """
    return _load(path, "unet", UNET_CLASSES, _unet_cls(), dtype, progress)


def load_diffusers_vae(path: str | os.PathLike, dtype=None, *, progress=None) -> nnx.Module:
    """A ready `AutoencoderKLTemporalDecoder` from a diffusers VAE folder or an SVD repository root."""
    return _load(path, "vae", VAE_CLASSES, _vae_cls(), dtype, progress)


def _export(model: nnx.Module, path, class_name: str) -> Path:
    config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    config["_class_name"] = class_name
    return io.write_component(path, config, export_tensors(model, SVD_RULES), STEM)


def export_diffusers_unet(model: nnx.Module, path: str | os.PathLike) -> Path:
    """Write `model` as a diffusers UNet folder (config.json + safetensors)."""
    return _export(model, path, UNET_CLASSES[0])


def export_diffusers_vae(model: nnx.Module, path: str | os.PathLike) -> Path:
    """Write `model` as a diffusers VAE folder (config.json + safetensors)."""
    return _export(model, path, VAE_CLASSES[0])


def diffusers_class(config: dict) -> str:
    """Which SVD component a diffusers config describes ('unet' or 'vae')."""
    name = config.get("_class_name")
    if name in UNET_CLASSES:
        return "unet"
    if name in VAE_CLASSES:
        return "vae"
    raise io.ConversionError(
        f"config names {name!r}; expected one of {UNET_CLASSES + VAE_CLASSES}"
    )


def build(kind: str, config: dict, *, rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32) -> nnx.Module:
    """A randomly initialised SVD component ('unet' or 'vae') from a diffusers config dict."""
    cls = {"unet": _unet_cls, "vae": _vae_cls}[kind]()
    return cls.from_diffusers_config(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
