"""Device meshes and logical-axis sharding, driven by rule tables that are config data.

A mesh is one config line, `[("data", -1), ("fsdp", 1), ("tensor", 1)]` (-1: all the
devices the other axes leave). Parameters are sharded in two steps, both tables that the
train config holds (`configs/train.py`: `sharding.param_rules`, the VAE's own
`sharding.vae_param_rules`, `sharding.mesh_rules`) and passes in:

1. `rules`: regex on the dotted NNX path -> logical axes of the array's TRAILING
   dimensions (leading dimensions, e.g. conv taps, are never sharded). First match wins.
2. `mesh_rules`: logical axis -> mesh axes (a name, a tuple of names, or None), e.g. FSDP
   `embed` -> `fsdp`, tensor parallelism `mlp` / `heads` -> `tensor`.

A dimension that does not divide by its mesh axes' size is left unsharded, and arrays
smaller than `min_size` elements are replicated (biases, norms, mix factors). Activations
use the logical axis `batch`. Models never see a mesh: only `train/` and the benchmarks
call this module.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MeshConfig = Sequence[tuple[str, int]]
Rules = Sequence[tuple[str, tuple[str | None, ...]]]

DEFAULT_MESH: MeshConfig = (("data", -1), ("fsdp", 1), ("tensor", 1))

MIN_SHARD_SIZE = 2**12


def resolve_mesh_shape(config: MeshConfig, num_devices: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Names and sizes of a mesh config line; one size may be -1 (fill)."""
    names = tuple(n for n, _ in config)
    sizes = [int(s) for _, s in config]
    if len(set(names)) != len(names):
        raise ValueError(f"mesh axis names repeat: {names}")
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1: {list(config)}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"{num_devices} devices do not divide into mesh {list(config)}")
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise ValueError(f"mesh {dict(zip(names, sizes))} needs {int(np.prod(sizes))} devices, have {num_devices}")
    return names, tuple(sizes)


def make_mesh(config: MeshConfig = DEFAULT_MESH, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with Auto axes (the sharding is given by in/out shardings and constraints)."""
    devices = list(devices) if devices is not None else jax.devices()
    names, sizes = resolve_mesh_shape(config, len(devices))
    return jax.make_mesh(sizes, names, axis_types=(AxisType.Auto,) * len(names), devices=devices)


def path_str(path: Sequence[Any]) -> str:
    """A pytree / NNX state path as "a.b.0.kernel"."""
    out = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                k = getattr(k, attr)
                break
        out.append(str(k))
    return ".".join(out)


def logical_axes(path: str, ndim: int, rules: Rules) -> tuple[str | None, ...]:
    """Logical axes (one per dim) of an array at `path`: the first matching rule's axes on the
    trailing dims, None elsewhere."""
    for pattern, axes in rules:
        if re.search(pattern, path):
            axes = tuple(axes)[-ndim:] if ndim else ()
            return (None,) * (ndim - len(axes)) + axes
    return (None,) * ndim


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    mesh_rules: Mapping[str, Any], min_size: int = 0) -> P:
    """PartitionSpec for an array of `shape` whose dims carry `axes`; mesh axes that do not
    divide the dim, have size 1, or are already used by an earlier dim are dropped."""
    if int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    used: set[str] = set()
    spec = []
    for name, dim in zip(axes, shape):
        target = mesh_rules.get(name) if name else None
        target = (target,) if isinstance(target, str) else tuple(target or ())
        kept = []
        for ax in target:
            size = mesh.shape[ax] if ax in mesh.shape else 1
            if size == 1 or ax in used or dim % (size * int(np.prod([mesh.shape[a] for a in kept], dtype=np.int64))):
                continue
            kept.append(ax)
        used.update(kept)
        spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    while spec and spec[-1] is None:
        spec.pop()
    return P(*spec)


def param_spec(path: str, shape: Sequence[int], mesh: Mesh, *, rules: Rules, mesh_rules: Mapping[str, Any],
               min_size: int = MIN_SHARD_SIZE) -> P:
    return logical_to_spec(logical_axes(path, len(shape), rules), shape, mesh, mesh_rules, min_size)


def tree_specs(tree: Any, mesh: Mesh, **kw) -> Any:
    """PartitionSpecs for every array leaf of a pytree (e.g. an nnx.State), by path."""
    return jax.tree_util.tree_map_with_path(lambda p, x: param_spec(path_str(p), x.shape, mesh, **kw), tree)


def tree_shardings(tree: Any, mesh: Mesh, **kw) -> Any:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), tree_specs(tree, mesh, **kw),
                        is_leaf=lambda x: isinstance(x, P))


def batch_spec(shape: Sequence[int], mesh: Mesh, mesh_rules: Mapping[str, Any]) -> P:
    """Inputs and per-example activations: the leading (batch) dim over `batch`'s mesh axes
    (the axes that divide it)."""
    if len(shape) == 0:
        return P()
    return logical_to_spec(("batch",) + (None,) * (len(shape) - 1), shape, mesh, mesh_rules)


def batch_shardings(tree: Any, mesh: Mesh, mesh_rules: Mapping[str, Any]) -> Any:
    return jax.tree.map(lambda x: NamedSharding(mesh, batch_spec(np.shape(x), mesh, mesh_rules)), tree)


def constrain_batch(tree: Any, mesh: Mesh | None, mesh_rules: Mapping[str, Any] | None) -> Any:
    """Activation constraint: every array's leading dim sharded over `batch` (no-op without a mesh)."""
    if mesh is None:
        return tree
    return jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(x, NamedSharding(mesh, batch_spec(x.shape, mesh, mesh_rules))), tree)


def opt_state_shardings(opt_state: Any, params: Any, mesh: Mesh, **kw) -> Any:
    """Shardings for an optax state: a leaf whose path contains a parameter's path (mu, nu, the
    8-bit moments) and has its shape gets the parameter's spec; 1-D per-block scales of a
    parameter are sharded over that parameter's mesh axes where they divide; the rest is
    replicated."""
    pspecs = {path_str(p): (tuple(x.shape), param_spec(path_str(p), x.shape, mesh, **kw))
              for p, x in jax.tree_util.tree_leaves_with_path(params)}

    def one(path, x):
        comps = path_str(path).split(".")
        for i in range(len(comps)):
            for j in range(len(comps), i, -1):
                hit = pspecs.get(".".join(comps[i:j]))
                if hit is None:
                    continue
                shape, spec = hit
                if tuple(x.shape) == shape:
                    return NamedSharding(mesh, spec)
                axes = tuple(a for s in spec if s is not None for a in ((s,) if isinstance(s, str) else s))
                size = int(np.prod([mesh.shape[a] for a in axes], dtype=np.int64))
                if x.ndim == 1 and axes and x.shape[0] % size == 0:
                    return NamedSharding(mesh, P(axes if len(axes) > 1 else axes[0]))
                return NamedSharding(mesh, P())
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(one, opt_state)


def describe(tree: Any) -> dict[str, str]:
    """path -> 'shape spec' for logging and golden tests."""
    return {path_str(p): f"{tuple(x.shape)} {x.sharding.spec if hasattr(x, 'sharding') else '-'}"
            for p, x in jax.tree_util.tree_leaves_with_path(tree)}
