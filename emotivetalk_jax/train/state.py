"""Train state, model initialisation on the host, mixed precision and rematerialisation.

The train state is a plain pytree (`TrainState`) of pure dicts, so orbax saves it as is
and `sharding.tree_shardings` shards it by path:
  params: {group: params}  the parameters each update group trains (fp32 master weights)
  rest:   every other variable of the trained model (frozen parameters, buffers)
  opt:    {group: optax state}
  step, skipped (non-finite updates so far), bad_streak (non-finite updates in a row), rng.
Frozen conditioning models (audio encoder, face encoders, V-AID, VAE) are not part of it:
they are rebuilt from their checkpoints (or the seed) at every start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from emotivetalk_jax.convert.engine import fill_params, truncated_lecun_normal


class TrainState(NamedTuple):
    params: dict[str, Any]
    rest: Any
    opt: dict[str, Any]
    step: jax.Array
    skipped: jax.Array
    bad_streak: jax.Array
    rng: jax.Array  # raw uint32 key data (jax.random.key_data), checkpointable


def host_init(model: nnx.Module, seed: int = 0) -> nnx.Module:
    """A concrete copy of an abstract (`nnx.eval_shape`) model, initialised on the host like
    flax's defaults: kernels truncated lecun-normal (fan_in = all but the last axis), biases
    and means 0, norm scales 1, anything else N(0, 0.02^2). An eager NNX build compiles every
    initialiser (tens of seconds even for tiny models on a small CPU); this takes
    milliseconds. Modules that need special values (ETHD's zero output kernels) set them after."""

    def draw(leaf: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
        if leaf == "kernel":
            return truncated_lecun_normal(shape, rng)
        if leaf in ("bias", "mean"):  # mean: a data statistic's identity value (models.dicte.DataStats)
            return np.zeros(shape)
        if leaf == "scale":
            return np.ones(shape)
        return 0.02 * rng.standard_normal(shape)

    graphdef, params, rest = nnx.split(fill_params(model, seed, draw), nnx.Param, ...)
    rest_flat = [(p, v.replace(jnp.zeros(v.shape, v.dtype)) if hasattr(v, "shape") and isinstance(
        getattr(v, "value", None), jax.ShapeDtypeStruct) else v) for p, v in nnx.to_flat_state(rest)]
    return nnx.merge(graphdef, params, nnx.from_flat_state(rest_flat))


def cast_floating(tree: Any, dtype) -> Any:
    """Floating leaves of `tree` in `dtype` (the bf16 compute copy of fp32 master weights)."""
    dtype = jnp.dtype(dtype)

    def one(x):
        return x.astype(dtype) if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(one, tree)


# ----------------------------------------------------------------------------- remat

_REMAT_CACHE: dict[tuple[type, str], type] = {}


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray))


def remat_class(cls: type, policy: str = "") -> type:
    """The wrapper of `cls` for rematerialisation: a subclass whose `__call__` runs `cls.__call__`
    under `jax.checkpoint` (`policy` names a `jax.checkpoint_policies` member, '' = save nothing).
    Being a subclass with the same attributes, a wrapped module keeps every parameter path, so
    checkpoints do not depend on the remat setting. Array arguments are traced; anything else
    (frame counts, flags) stays static."""
    key = (cls, policy)
    if key in _REMAT_CACHE:
        return _REMAT_CACHE[key]
    pol = getattr(jax.checkpoint_policies, policy) if policy else None

    def __call__(self, *args, **kwargs):
        graphdef, state = nnx.split(self)
        leaves, treedef = jax.tree.flatten((args, kwargs))
        mask = [_is_array(x) for x in leaves]

        def f(state, arrays):
            it = iter(arrays)
            a, kw = jax.tree.unflatten(treedef, [next(it) if m else x for x, m in zip(leaves, mask)])
            return cls.__call__(nnx.merge(graphdef, state), *a, **kw)

        return jax.checkpoint(f, policy=pol)(state, [x for x, m in zip(leaves, mask) if m])

    sub = type(f"Remat{cls.__name__}", (cls,), {"__call__": __call__, "__module__": cls.__module__})
    _REMAT_CACHE[key] = sub
    return sub


def rematerialise(model: nnx.Module, class_names: Sequence[str], policy: str = "") -> tuple[nnx.Module, int]:
    """(a copy of `model` in which every submodule whose class name is in `class_names` is
    wrapped by `remat_class`, how many were wrapped). `model` itself is left as it is; the
    copy shares its variables and has the same parameter paths."""
    names, wrapped = set(class_names), 0

    def wrap(path, node):
        nonlocal wrapped
        if isinstance(node, nnx.Module) and type(node).__name__ in names:
            new = object.__new__(remat_class(type(node), policy))
            new.__dict__.update(node.__dict__)
            wrapped += 1
            return new
        return node

    if not names:
        return model, 0
    out = nnx.recursive_map(wrap, model)
    return out, wrapped
