"""Running on an accelerator: the precision policy and the persistent compilation cache.

Precision (inference): "auto" is bf16 weights and bf16 compute on accelerators (GPU, TPU) and
float32 on CPU; "float32" / "bfloat16" force one. `apply_precision` stores every floating
`nnx.Param` of a model in the dtype and sets each layer's compute `dtype` to it, so the
whole forward runs in it (the sampler's own arithmetic stays float32: a bf16 backbone output
promotes back). Training does not use this: it keeps float32 master weights and casts them,
with the batch, to `compute_dtype` inside the step (`train/stages.py make_step`;
`configs/train.py` sets bfloat16 for every full-size variant, float32 for the CPU-sized ones).

Compilation cache: `setup_compilation_cache()` turns on jax's persistent cache, once per
process, before the first compile. The `generate` and `train` entry points call it. Location,
first that is set: `$EMOTIVETALK_COMPILE_CACHE` (`off` disables it), `$JAX_COMPILATION_CACHE_DIR`,
`$XDG_CACHE_HOME/emotivetalk_jax/xla`, `~/.cache/emotivetalk_jax/xla`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

PRECISIONS = ("auto", "float32", "bfloat16")
CACHE_ENV = "EMOTIVETALK_COMPILE_CACHE"
_log = logging.getLogger(__name__)
_cache_dir: Path | None = None


def resolve_precision(name: str = "auto", backend: str | None = None) -> jnp.dtype:
    """The inference dtype: "auto" is bfloat16 on an accelerator, float32 on CPU."""
    if name not in PRECISIONS:
        raise ValueError(f"precision {name!r} is not one of {', '.join(PRECISIONS)}")
    if name == "auto":
        name = "float32" if (backend or jax.default_backend()) == "cpu" else "bfloat16"
    return jnp.dtype(name)


def apply_precision(model: nnx.Module, dtype) -> nnx.Module:
    """Store the floating parameters of `model` in `dtype` and compute every layer in it (in place)."""
    dtype = jnp.dtype(dtype)
    params = nnx.state(model, nnx.Param)
    cast = lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) and p.dtype != dtype else p
    nnx.update(model, jax.tree.map(cast, params))
    for _, m in nnx.iter_graph(model):
        if isinstance(m, nnx.Module) and hasattr(m, "dtype") and not isinstance(getattr(m, "dtype"), nnx.Variable):
            current = getattr(m, "dtype")
            if current is None or jnp.issubdtype(jnp.dtype(current), jnp.floating):
                m.dtype = dtype
    return model


def default_cache_dir() -> Path | None:
    """Where the persistent compilation cache lives (None: turned off), per the module docstring."""
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "none", "false") else Path(env).expanduser()
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "emotivetalk_jax" / "xla"


def setup_compilation_cache(path: str | os.PathLike | None = None, *, min_compile_secs: float = 0.0) -> Path | None:
    """Turn on jax's persistent compilation cache (idempotent; call before the first compile).
    Programs that took at least `min_compile_secs` to compile are stored; returns the folder."""
    global _cache_dir
    if _cache_dir is not None:
        return _cache_dir
    folder = Path(path).expanduser() if path is not None else default_cache_dir()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a read-only home: run without the cache rather than fail
        _log.warning("compilation cache off: cannot create %s (%s)", folder, e)
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _cache_dir = folder
    return folder


__all__ = ["CACHE_ENV", "PRECISIONS", "apply_precision", "default_cache_dir", "resolve_precision",
           "setup_compilation_cache"]
