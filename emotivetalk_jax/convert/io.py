"""Reading and writing PyTorch-ecosystem checkpoint directories, safetensors only.

Layouts understood:
- diffusers: `config.json` + `diffusion_pytorch_model.safetensors` (or a sharded
  `diffusion_pytorch_model.safetensors.index.json`); a pipeline root with the component
  in a sub-folder (`unet/`, `vae/`).
- Hugging Face transformers: `config.json` + `model.safetensors` (or its sharded index).

Pickled weights (`.bin`, `.ckpt`, `.pt`, `.pth`) are refused, never unpickled: loading a
pickle runs arbitrary code from the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from emotivetalk_jax.convert.engine import ConversionError

_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


def _refuse_pickles(folder: Path, stem: str) -> None:
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise ConversionError(
            f"{folder} holds only pickled weights ({', '.join(pickles)}); pickles can run code and are "
            f"never loaded: re-save them as {stem}.safetensors (save_pretrained(..., safe_serialization=True))"
        )


def resolve_component(path: str | os.PathLike, subfolder: str | None, stem: str) -> Path:
    """The folder holding `config.json` and the weights: `path` itself or `path/subfolder`."""
    root = Path(path)
    if root.is_file():
        if root.suffix in _PICKLE_SUFFIXES:
            _refuse_pickles(root.parent, stem)
        root = root.parent
    if not root.exists():
        raise ConversionError(f"checkpoint path {root} does not exist; pass the model directory")
    if not (root / "config.json").exists() and subfolder and (root / subfolder / "config.json").exists():
        root = root / subfolder
    if not (root / "config.json").exists():
        where = f"{root} or {root / subfolder}" if subfolder else str(root)
        raise ConversionError(f"no config.json in {where}; pass the model directory that holds config.json")
    return root


def read_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{folder / 'config.json'} is not valid JSON ({e}); re-download or re-export it") from e


def check_class(config: Mapping, expected: tuple[str, ...], folder: Path, *, key: str = "_class_name") -> None:
    """Fail if the config names another model class than one of `expected`."""
    found = config.get(key)
    if isinstance(found, list):  # transformers' "architectures"
        found = found[0] if found else None
    if found is not None and found not in expected:
        raise ConversionError(
            f"{folder / 'config.json'} describes a {found}, not a {' or '.join(expected)}; "
            "point at the right component folder"
        )


def _load_safetensors(file: Path) -> dict[str, np.ndarray]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise ConversionError(
            f"cannot read {file}: {e}. The file is truncated or not safetensors; re-download or re-export it"
        ) from e


def read_weights(folder: Path, stem: str) -> dict[str, np.ndarray]:
    """All tensors of `stem.safetensors` or of its sharded index in `folder`."""
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if single.exists():
        return _load_safetensors(single)
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ConversionError(f"{index} is not a valid safetensors index ({e}); re-download it") from e
        tensors: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).exists():
                raise ConversionError(f"shard {shard} listed in {index.name} is missing from {folder}")
            tensors.update(_load_safetensors(folder / shard))
        absent = sorted(set(weight_map) - set(tensors))
        if absent:
            raise ConversionError(f"{len(absent)} keys listed in {index.name} are in no shard, e.g. {absent[0]}")
        return tensors
    _refuse_pickles(folder, stem)
    raise ConversionError(f"no {stem}.safetensors (or sharded index) in {folder}")


def write_component(
    folder: str | os.PathLike, config: Mapping, tensors: Mapping[str, np.ndarray], stem: str
) -> Path:
    """Write `config.json` + `stem.safetensors` into `folder` atomically (temp file + rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{stem}.safetensors"
    tmp = weights.with_suffix(".safetensors.tmp")
    cfg_tmp = folder / "config.json.tmp"
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, weights)
        cfg_tmp.write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
        os.replace(cfg_tmp, folder / "config.json")
    finally:  # interrupted or failed: no temporary file stays
        tmp.unlink(missing_ok=True)
        cfg_tmp.unlink(missing_ok=True)
    return folder
