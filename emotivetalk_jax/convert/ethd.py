"""SVD -> ETHD: an ETHD that inherits every parameter of an SVD UNet (3.3).

The SVD parameters are taken as they are (same arrays, same dtype); ETHD's additions
(`models.ethd.NEW_KEYS`) are drawn on the host as their constructors would initialise them
(`_init_new`). `load_ethd_from_svd` reads the UNet from a diffusers folder (`convert.svd`) or
a native checkpoint (`convert.native`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from emotivetalk_jax.convert import native, svd
from emotivetalk_jax.convert.engine import truncated_lecun_normal
from emotivetalk_jax.models.ethd import ETHD, NEW_KEYS, ZERO_OUT
from emotivetalk_jax.models.ethd_variants import ETHDConfig
from emotivetalk_jax.models.unet import UNetSpatioTemporal


def _path(p: tuple) -> str:
    return ".".join(str(k) for k in p)


def _is_new(path: str) -> bool:
    return any(k in path.split(".") for k in NEW_KEYS)


def _init_new(path: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """The constructors' initialisation of an added parameter, drawn on the host: zero output
    kernels of the expression branches, ones / zeros for norm scales / biases, and flax's
    default lecun-normal kernels (truncated to +-2 std, std = 1 / sqrt(fan_in) / 0.8796)."""
    parts = path.split(".")
    leaf = parts[-1]
    if leaf == "kernel" and "to_out" in parts and any(k in parts for k in ZERO_OUT):
        return np.zeros(shape, np.float32)
    if leaf == "scale":
        return np.ones(shape, np.float32)
    if leaf == "bias":
        return np.zeros(shape, np.float32)
    return truncated_lecun_normal(shape, rng).astype(np.float32)


def inherit_svd(unet: UNetSpatioTemporal, ethd_cfg: ETHDConfig, *, seed: int = 0) -> ETHD:
    """ETHD with every SVD parameter taken from `unet` (same arrays, same dtype) and the
    additions initialised as the constructors would (in the SVD parameters' dtype).

    Strict: fails naming every SVD parameter that ETHD lacks or shapes differently, and
    every ETHD parameter that has no SVD source and is not one of `NEW_KEYS`.
    """
    abstract = nnx.eval_shape(lambda: ETHD.from_svd_config(unet.config, ethd_cfg, rngs=nnx.Rngs(0)))
    src = {_path(p): v for p, v in nnx.to_flat_state(nnx.state(unet, nnx.Param))}
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    target = {_path(p): v for p, v in nnx.to_flat_state(params)}
    missing = sorted(set(src) - set(target))
    shapes = [f"{k} {src[k].shape} vs {target[k].shape}" for k in sorted(set(src) & set(target))
              if tuple(src[k].shape) != tuple(target[k].shape)]
    orphans = sorted(k for k in set(target) - set(src) if not _is_new(k))
    if missing or shapes or orphans:
        raise ValueError(f"SVD UNet does not fit ETHD: missing in ETHD {missing[:10]}; shape mismatches "
                         f"{shapes[:10]}; ETHD parameters with no SVD source {orphans[:10]}")
    dtype = src["conv_in.kernel"].value.dtype
    rng = np.random.default_rng(seed)
    flat = []
    for p, var in nnx.to_flat_state(params):
        name = _path(p)
        value = src[name].value if name in src else jnp.asarray(_init_new(name, tuple(var.shape), rng), dtype)
        flat.append((p, var.replace(value)))
    return nnx.merge(graphdef, nnx.from_flat_state(flat), rest)


def _native_unet_folder(path: Path) -> Path | None:
    for folder in (path, path / "unet"):
        cfg = folder / "config.json"
        if cfg.exists() and json.loads(cfg.read_text()).get("format") == "emotivetalk_jax":
            return folder
    return None


def load_ethd_from_svd(path: str | os.PathLike, ethd_cfg: ETHDConfig, *, dtype=None, seed: int = 0,
                       progress=None) -> ETHD:
    """ETHD initialised from an SVD checkpoint: a diffusers UNet folder / SVD repository root
    (through the strict converter, `convert.svd`) or a native orbax one (`convert.native`)."""
    path = Path(path)
    folder = _native_unet_folder(path)
    unet = native.load_model(folder, dtype) if folder else svd.load_diffusers_unet(path, dtype, progress=progress)
    if not isinstance(unet, UNetSpatioTemporal):
        raise ValueError(f"{path} holds a {type(unet).__name__}, not an SVD UNet")
    return inherit_svd(unet, ethd_cfg, seed=seed)


__all__ = ["inherit_svd", "load_ethd_from_svd"]
