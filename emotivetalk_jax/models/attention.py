"""Attention backends as a policy: every attention call in `models/` goes through `attend`.

`choose(requested, backend=..., dtype=..., ...)` is a pure function of the call's backend,
dtype and shape that returns the implementation and why:

- "cudnn": cuDNN flash attention through `jax.nn.dot_product_attention(implementation="cudnn")`,
  on NVIDIA GPUs for bf16 / fp16 inputs whose head dim is <= 128 and a multiple of 8; a mask or
  bias must broadcast to (B, N, T, S) with even T and S (cuDNN's bias patterns).
- "pallas": the Pallas TPU flash kernel (`jax.experimental.pallas.ops.tpu.flash_attention`), on
  TPU when T and S are multiples of 128 (its block size), with no bias and at most a key-padding
  mask (B, 1, 1, S) (sent as segment ids).
- "xla": `jax.nn.dot_product_attention` as written, everywhere else. It is the CPU path, bit for
  bit what the call sites computed before this module.

"auto" (the default) takes the first that applies on the running backend. An explicit request
that a call does not qualify for falls back to "xla" and is logged once per reason, never
silently. The choice is made at trace time: a module's `attention_impl` attribute (None: the
process default, `set_default`), set on a whole model by `set_attention`, is static graph
data, so a jitted function retraces when it changes.

Shape legend: q (B, T, N, H), k / v (B, S, N, H); B batch, T queries, S keys, N heads, H head dim.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "pallas")
_log = logging.getLogger(__name__)
_logged: set[tuple[str, str]] = set()
_default = "auto"


@dataclass(frozen=True)
class Choice:
    implementation: str  # xla | cudnn | pallas
    reason: str  # why, when it is not what was asked for ("" otherwise)


def check(name: str) -> str:
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {name!r} is not one of {', '.join(IMPLEMENTATIONS)}")
    return name


def set_default(name: str) -> None:
    """The process default for modules whose `attention_impl` is None (entry points call this once,
    before anything is traced)."""
    global _default
    _default = check(name)


def get_default() -> str:
    return _default


def set_attention(model: nnx.Module, name: str | None) -> nnx.Module:
    """Set `attention_impl` on every attention module of `model` (in place); None: the process default."""
    if name is not None:
        check(name)
    for _, m in nnx.iter_graph(model):
        if isinstance(m, nnx.Module) and hasattr(m, "attention_impl"):
            m.attention_impl = name
    return model


def current_backend() -> str:
    """cpu | cuda | rocm | tpu (| whatever else jax names) of the default device."""
    backend = jax.default_backend()
    if backend == "gpu":
        version = str(getattr(jax.devices()[0].client, "platform_version", "")).lower()
        return "rocm" if "rocm" in version else "cuda"
    return backend


def mask_kind(mask_shape: tuple[int, ...] | None, t: int, s: int) -> str:
    """none | keys (a key-padding mask (B, 1, 1, S)) | full (anything else that broadcasts)."""
    if mask_shape is None:
        return "none"
    shape = (1,) * (4 - len(mask_shape)) + tuple(mask_shape)
    return "keys" if shape[1:3] == (1, 1) and shape[3] == s else "full"


def _cudnn(dtype, head_dim: int, t: int, s: int, masked: bool) -> str:
    """'' when cuDNN flash takes the call, else why not."""
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"cudnn needs bf16/fp16 inputs, got {jnp.dtype(dtype).name}"
    if head_dim > 128 or head_dim % 8:
        return f"cudnn flash needs a head dim <= 128 and a multiple of 8, got {head_dim}"
    if masked and (t % 2 or s % 2):
        return f"cudnn takes a mask or bias only with even sequence lengths, got T={t} S={s}"
    return ""


def _pallas(t: int, s: int, has_bias: bool, kind: str) -> str:
    if t % 128 or s % 128:
        return f"the TPU flash kernel needs T and S multiples of 128, got T={t} S={s}"
    if has_bias:
        return "the TPU flash kernel path takes no additive bias"
    if kind == "full":
        return "the TPU flash kernel path takes only key-padding masks (B, 1, 1, S)"
    return ""


def choose(requested: str, *, backend: str, dtype, head_dim: int, q_len: int, kv_len: int,
           has_bias: bool = False, mask: str = "none") -> Choice:
    """The implementation for one call. `mask`: none | keys | full (see `mask_kind`)."""
    check(requested)
    masked = has_bias or mask != "none"
    why_cudnn = "cudnn runs on NVIDIA GPUs only, not on " + backend if backend != "cuda" else (
        _cudnn(dtype, head_dim, q_len, kv_len, masked))
    why_pallas = "the Pallas flash kernel runs on TPU only, not on " + backend if backend != "tpu" else (
        _pallas(q_len, kv_len, has_bias, mask))
    if requested == "auto":
        if backend == "cuda" and not why_cudnn:
            return Choice("cudnn", "")
        if backend == "tpu" and not why_pallas:
            return Choice("pallas", "")
        return Choice("xla", {"cuda": why_cudnn, "tpu": why_pallas}.get(backend, ""))
    if requested == "cudnn" and why_cudnn:
        return Choice("xla", why_cudnn)
    if requested == "pallas" and why_pallas:
        return Choice("xla", why_pallas)
    return Choice(requested, "")


def _log_once(requested: str, choice: Choice) -> None:
    key = (requested, choice.reason)
    if choice.reason and key not in _logged:
        _logged.add(key)
        level = logging.INFO if requested == "auto" else logging.WARNING
        _log.log(level, "attention: asked for %s, using %s for this call: %s", requested, choice.implementation,
                 choice.reason)


def _pallas_flash(q, k, v, mask):
    from jax.experimental.pallas.ops.tpu import flash_attention as fa

    b, t, _, h = q.shape
    s = k.shape[1]
    segments = None
    if mask is not None:  # key padding: valid keys share the queries' segment
        keys = jnp.broadcast_to(mask.reshape((1,) * (4 - mask.ndim) + mask.shape)[:, 0, 0, :], (b, s))
        segments = fa.SegmentIds(q=jnp.ones((b, t), jnp.int32), kv=keys.astype(jnp.int32))
    to_bnth = lambda x: jnp.swapaxes(x, 1, 2)
    out = fa.flash_attention(to_bnth(q), to_bnth(k), to_bnth(v), segment_ids=segments, sm_scale=1.0 / np.sqrt(h))
    return jnp.swapaxes(out, 1, 2)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, *, bias: jax.Array | None = None,
           mask: jax.Array | None = None, implementation: str | None = None,
           backend: str | None = None) -> jax.Array:
    """`jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask)` through the policy:
    (B, T, N, H) x (B, S, N, H) -> (B, T, N, H). `implementation` None: the process default;
    `backend` None: the running one (tests pass a name)."""
    requested = check(implementation or _default)
    t, s = q.shape[-3], k.shape[-3]
    kind = mask_kind(None if mask is None else mask.shape, t, s)
    choice = choose(requested, backend=backend or current_backend(), dtype=q.dtype, head_dim=q.shape[-1],
                    q_len=t, kv_len=s, has_bias=bias is not None, mask=kind)
    _log_once(requested, choice)
    if choice.implementation == "pallas":
        return _pallas_flash(q, k, v, mask)
    if choice.implementation == "cudnn":
        if mask is not None and kind == "keys":  # cuDNN's bias must span (T, S)
            mask = jnp.broadcast_to(mask, (*mask.shape[:-2], t, s))
        return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation="cudnn")
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask)


__all__ = ["IMPLEMENTATIONS", "Choice", "attend", "check", "choose", "current_backend", "get_default", "mask_kind",
           "set_attention", "set_default"]
