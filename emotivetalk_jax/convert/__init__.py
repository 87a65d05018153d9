"""Checkpoint conversion: PyTorch-ecosystem safetensors folders <-> NNX models.

- SVD (diffusers): `load_diffusers_unet`, `load_diffusers_vae`, `export_diffusers_unet`,
  `export_diffusers_vae`.
- Audio encoders (Hugging Face transformers): `load_hf_audio_encoder`,
  `export_hf_audio_encoder` for Wav2Vec2 and WavLM directories.
- The project's own orbax checkpoints: `convert_svd` (diffusers -> orbax) and
  `export_native` (orbax -> diffusers); `load_model` / `save_model` for one component.
All of them go through one strict engine (`engine.py`) and one rule table per component.
"""

from __future__ import annotations

import os
from pathlib import Path

from tqdm import tqdm

from emotivetalk_jax.convert import io, native, svd
from emotivetalk_jax.convert.audio import export_hf_audio_encoder, load_hf_audio_encoder
from emotivetalk_jax.convert.engine import ConversionError
from emotivetalk_jax.convert.native import load_model, save_model
from emotivetalk_jax.convert.svd import (
    export_diffusers_unet,
    export_diffusers_vae,
    load_diffusers_unet,
    load_diffusers_vae,
)

_SVD_LOADERS = {"unet": load_diffusers_unet, "vae": load_diffusers_vae}
_SVD_EXPORTERS = {"unet": export_diffusers_unet, "vae": export_diffusers_vae}


def _svd_components(src: Path) -> dict[str, Path]:
    if (src / "config.json").exists():
        return {svd.diffusers_class(io.read_config(src)): src}
    found = {k: src / k for k in ("unet", "vae") if (src / k / "config.json").exists()}
    if not found:
        raise ConversionError(
            f"{src} is neither a diffusers UNet/VAE folder nor an SVD repository with unet/ or vae/; "
            "pass the folder that holds model_index.json or the component's config.json"
        )
    return found


def convert_svd(src: str | os.PathLike, out: str | os.PathLike, *, dtype=None, progress: bool = True) -> dict[str, Path]:
    """Convert an SVD repository root (unet/ + vae/) or one component folder to orbax.

    A root gives `out/unet` and `out/vae`; a single component folder gives `out` itself.
    Returns component -> written folder.
    """
    src, out = Path(src), Path(out)
    if not src.exists():
        raise ConversionError(f"{src} does not exist; pass a diffusers SVD folder")
    parts = _svd_components(src)
    single = (src / "config.json").exists()
    targets = {kind: out if single else out / kind for kind in parts}
    for kind, dst in targets.items():
        if (dst / "state").exists():
            raise FileExistsError(f"{dst} already holds a checkpoint; choose a new output folder or delete it")
    written = {}
    for kind, folder in parts.items():
        bar = (lambda items, kind=kind: tqdm(items, desc=f"convert {kind}", unit="tensor")) if progress else None
        model = _SVD_LOADERS[kind](folder, dtype, progress=bar)
        written[kind] = save_model(model, targets[kind], kind)
    return written


def convert_audio(src: str | os.PathLike, out: str | os.PathLike, *, dtype=None) -> Path:
    """Convert a Hugging Face Wav2Vec2 / WavLM directory to an orbax checkpoint folder."""
    return save_model(load_hf_audio_encoder(src, dtype), out, "audio")


def export_native(ckpt: str | os.PathLike, out: str | os.PathLike) -> dict[str, Path]:
    """Write an orbax checkpoint (one component folder, or a folder of them) in diffusers format."""
    ckpt, out = Path(ckpt), Path(out)
    if (ckpt / "config.json").exists():
        parts = {native.read_meta(ckpt)["component"]: (ckpt, out)}
    else:
        parts = {k: (ckpt / k, out / k) for k in ("unet", "vae", "audio") if (ckpt / k / "config.json").exists()}
    if not parts:
        raise ConversionError(f"{ckpt} holds no emotivetalk_jax checkpoint; run `emotivetalk convert svd` first")
    written = {}
    for kind, (src, dst) in parts.items():
        exporters = {**_SVD_EXPORTERS, "audio": export_hf_audio_encoder}
        if kind not in exporters:
            raise ConversionError(f"{src}: component {kind!r} has no PyTorch-ecosystem format")
        written[kind] = exporters[kind](load_model(src), dst)
    return written


__all__ = [
    "ConversionError",
    "convert_svd",
    "export_native",
    "export_diffusers_unet",
    "export_diffusers_vae",
    "export_hf_audio_encoder",
    "load_hf_audio_encoder",
    "convert_audio",
    "load_diffusers_unet",
    "load_diffusers_vae",
    "load_model",
    "save_model",
]
