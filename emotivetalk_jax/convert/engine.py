"""One strict engine for every checkpoint conversion.

A component declares a table of `Rule`s: a checkpoint-key pattern, an NNX state-path
pattern and a reversible `Transform`. The engine maps every checkpoint key through the
first rule whose source pattern matches, checks the result against the target model's
abstract state (`nnx.eval_shape`, nothing allocated), and fails naming every unmapped
key, every target parameter left without a value and every shape mismatch, all at once.
Export runs the same table backwards.

Pattern language (both sides): `*.` matches any dotted prefix, empty included
(`*.bias` matches `bias` and `a.b.bias`); `*` elsewhere matches one or more characters,
dots included (greedy); `#` matches zero or more characters inside one dotted segment. Wildcards are
numbered left to right and must appear in the same order on both sides.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class ConversionError(ValueError):
    """A checkpoint does not fit the model it is being loaded into."""


@dataclasses.dataclass(frozen=True)
class Transform:
    """A reversible array transform: checkpoint layout -> NNX layout and back."""

    name: str
    forward: Callable[[np.ndarray], np.ndarray]
    inverse: Callable[[np.ndarray], np.ndarray]


def _kernel_perm(ndim: int) -> tuple[int, ...]:
    # PyTorch stores (out, in, *spatial); flax stores (*spatial, in, out).
    if ndim < 2:
        return tuple(range(ndim))
    return tuple(range(2, ndim)) + (1, 0)


def _kernel_forward(a: np.ndarray) -> np.ndarray:
    return np.transpose(a, _kernel_perm(a.ndim))


def _kernel_inverse(a: np.ndarray) -> np.ndarray:
    return np.transpose(a, np.argsort(_kernel_perm(a.ndim)))


IDENTITY = Transform("identity", lambda a: a, lambda a: a)
# Linear (out, in) -> (in, out); Conv1d OIW -> WIO; Conv2d OIHW -> HWIO; Conv3d OIDHW -> DHWIO.
KERNEL = Transform("kernel", _kernel_forward, _kernel_inverse)


def _tokens(pattern: str) -> list[str]:
    """Split a pattern into literals and wildcards ('*.', '*', '#')."""
    return [t for t in re.split(r"(\*\.|\*|#)", pattern) if t]


def _wildcards(pattern: str) -> list[str]:
    return [t for t in _tokens(pattern) if t in ("*.", "*", "#")]


@dataclasses.dataclass(frozen=True)
class Rule:
    """Checkpoint keys matching `source` become NNX paths `target` through `transform`."""

    source: str
    target: str | None  # None: the key is deliberately dropped (e.g. a training-only head)
    transform: Transform = IDENTITY

    def __post_init__(self):
        if self.target is not None and _wildcards(self.source) != _wildcards(self.target):
            raise ValueError(f"rule {self.source!r} -> {self.target!r}: wildcards differ in order")


# Leaf rules every PyTorch component shares; put component rules before them.
COMMON_RULES: tuple[Rule, ...] = (
    Rule("*.#norm#.weight", "*.#norm#.scale"),
    Rule("*.weight", "*.kernel", KERNEL),
    Rule("*.bias", "*.bias"),
)


_WILDCARD_RE = {"*.": r"((?:.+\.)?)", "*": "(.+)", "#": "([^.]*)"}


def _compile(pattern: str) -> re.Pattern:
    return re.compile("".join(_WILDCARD_RE.get(t, re.escape(t)) for t in _tokens(pattern)) + r"\Z")


def _fill(pattern: str, groups: Sequence[str]) -> str:
    it = iter(groups)
    return "".join(next(it) if t in _WILDCARD_RE else t for t in _tokens(pattern))


def _apply(rules: Iterable[Rule], key: str, *, reverse: bool) -> tuple[str | None, Rule] | None:
    for rule in rules:
        if rule.target is None:
            if not reverse and _compile(rule.source).match(key):
                return None, rule
            continue
        src, dst = (rule.target, rule.source) if reverse else (rule.source, rule.target)
        m = _compile(src).match(key)
        if m:
            return _fill(dst, m.groups()), rule
    return None


def map_key(rules: Sequence[Rule], key: str) -> str | None:
    """The NNX path a checkpoint key maps to, or None if no rule matches."""
    hit = _apply(rules, key, reverse=False)
    return hit[0] if hit else None  # None also for dropped keys


def _path_str(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def abstract_params(model: nnx.Module) -> dict[str, jax.ShapeDtypeStruct]:
    """Dotted NNX path -> shape/dtype for every `nnx.Param` of a (possibly abstract) model."""
    state = nnx.state(model, nnx.Param)
    return {
        _path_str(path): jax.ShapeDtypeStruct(v.shape, v.dtype) for path, v in nnx.to_flat_state(state)
    }


def _summarise(title: str, items: list[str], limit: int = 20) -> str:
    shown = "; ".join(items[:limit])
    more = f"; ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{len(items)} {title}: {shown}{more}"


def plan_conversion(
    shapes: Mapping[str, tuple[int, ...]],
    model: nnx.Module,
    rules: Sequence[Rule],
    *,
    what: str = "checkpoint",
) -> dict[str, tuple[str, Transform]]:
    """Check that checkpoint keys with these shapes fill `model` exactly; return the plan.

    Returns NNX path -> (checkpoint key, transform). Raises `ConversionError` naming every
    unmapped checkpoint key, every target parameter with no source, every key two
    sources claim and every shape mismatch.
    """
    target = abstract_params(model)
    plan: dict[str, tuple[str, Transform]] = {}
    unmapped, unexpected, shape_errors, duplicates = [], [], [], []
    mismatched: set[str] = set()
    for key in sorted(shapes):
        hit = _apply(rules, key, reverse=False)
        if hit is None:
            unmapped.append(key)
            continue
        path, rule = hit
        if path is None:  # dropped on purpose
            continue
        if path not in target:
            unexpected.append(f"{key} -> {path}")
            continue
        if path in plan:
            duplicates.append(f"{key} and {plan[path][0]} -> {path}")
            continue
        dummy = np.empty(shapes[key], dtype=np.uint8)
        try:
            got = rule.transform.forward(dummy).shape
        except Exception as e:  # a transform that cannot apply is a shape error
            got = f"untransformable ({e})"
        if got != tuple(target[path].shape):
            shape_errors.append(f"{key} {tuple(shapes[key])} -> {path} needs {tuple(target[path].shape)}")
            mismatched.add(path)
            continue
        plan[path] = (key, rule.transform)
    missing = sorted(set(target) - set(plan) - mismatched)
    problems = []
    if unmapped:
        problems.append(_summarise("checkpoint keys match no rule", unmapped))
    if unexpected:
        problems.append(_summarise("checkpoint keys map to no model parameter", unexpected))
    if shape_errors:
        problems.append(_summarise("shape mismatches", shape_errors))
    if duplicates:
        problems.append(_summarise("model parameters claimed twice", duplicates))
    if missing:
        problems.append(_summarise("model parameters missing from the checkpoint", missing))
    if problems:
        name = type(model).__name__
        raise ConversionError(f"{what} does not fit {name}: " + " | ".join(problems))
    return plan


def load_into(
    model: nnx.Module,
    tensors: Mapping[str, Any],
    rules: Sequence[Rule],
    *,
    dtype: Any = None,
    what: str = "checkpoint",
    progress: Callable[[list], Iterable] | None = None,
) -> nnx.Module:
    """Build a concrete model from `model` (usually abstract, from `nnx.eval_shape`).

    `tensors` maps checkpoint keys to arrays (anything `np.asarray` accepts). Parameters
    are cast to `dtype` if given, else keep the model's declared dtype. `progress` wraps
    the list of parameters being filled (e.g. `tqdm.tqdm`).
    """
    shapes = {k: tuple(np.shape(v)) for k, v in tensors.items()}
    plan = plan_conversion(shapes, model, rules, what=what)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    flat = []
    items = list(nnx.to_flat_state(params))
    for path, var in progress(items) if progress else items:
        key, transform = plan[_path_str(path)]
        value = transform.forward(np.asarray(tensors[key]))
        flat.append((path, var.replace(jnp.asarray(value, dtype=dtype or var.dtype))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat), rest)


def export_tensors(model: nnx.Module, rules: Sequence[Rule]) -> dict[str, np.ndarray]:
    """Run the rule table backwards: NNX parameters -> checkpoint keys and layouts."""
    out: dict[str, np.ndarray] = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = _path_str(path)
        hit = _apply(rules, name, reverse=True)
        if hit is None:
            raise ConversionError(f"no rule exports model parameter {name}; add one to the rule table")
        key, rule = hit
        if key in out:
            raise ConversionError(f"two model parameters export to the same key {key}")
        out[key] = np.ascontiguousarray(rule.transform.inverse(np.asarray(var.value)))
    return out


def abstract_model(factory: Callable[[], nnx.Module]) -> nnx.Module:
    """The model `factory` builds, with shapes only (no memory allocated)."""
    return nnx.eval_shape(factory)


def count_params(model: nnx.Module) -> int:
    """Number of scalar parameters in a concrete or abstract model."""
    return int(sum(int(np.prod(s.shape)) for s in abstract_params(model).values()))


def fill_params(model: nnx.Module, seed: int, draw: Callable[[str, tuple, np.random.Generator], np.ndarray]) -> nnx.Module:
    """A concrete copy of a (usually abstract) model whose every `nnx.Param` is drawn on the host
    by `draw(leaf_name, shape, rng)`, in path order; other state is kept as it is."""
    rng = np.random.default_rng(seed)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    flat = [
        (path, var.replace(jnp.asarray(draw(str(path[-1]), tuple(var.shape), rng), dtype=var.dtype)))
        for path, var in nnx.to_flat_state(params)
    ]
    return nnx.merge(graphdef, nnx.from_flat_state(flat), rest)


def fill_from_arrays(abstract: nnx.Module, arrays: Mapping[str, np.ndarray], what: str, *,
                     subtree: str | None = None) -> nnx.Module:
    """`abstract` with every variable taken from `arrays` ({dotted path: array}; under
    `subtree.` when given), strict: a ConversionError names a mis-shaped or the missing arrays."""
    if subtree:
        arrays = {k[len(subtree) + 1:]: v for k, v in arrays.items() if k.startswith(subtree + ".")}
    graphdef, state = nnx.split(abstract)
    flat, missing = [], []
    for path, var in nnx.to_flat_state(state):
        key = _path_str(path)
        if key not in arrays:
            missing.append(key)
        elif tuple(arrays[key].shape) != tuple(var.shape):
            raise ConversionError(f"{what}: {key} has shape {arrays[key].shape}, the model wants {tuple(var.shape)}")
        else:
            flat.append((path, var.replace(jnp.asarray(arrays[key], var.dtype))))
    if missing:
        raise ConversionError(f"{what}: the checkpoint lacks {len(missing)} model arrays, e.g. {missing[:5]}")
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def truncated_lecun_normal(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """flax's default kernel initialiser drawn on the host: normal truncated to +-2 std, std =
    1 / sqrt(fan_in) / 0.8796 (fan_in = all but the last axis), as float64."""
    z = rng.standard_normal(shape)
    while (bad := np.abs(z) > 2).any():
        z[bad] = rng.standard_normal(int(bad.sum()))
    return z / np.sqrt(max(1, int(np.prod(shape[:-1])))) / 0.87962566103423978


def random_params(model: nnx.Module, seed: int = 0, *, scale: float = 1.0) -> nnx.Module:
    """A concrete copy of a (usually abstract) model with random parameters drawn on the host.

    Kernels ~ N(0, scale^2 / fan_in) (fan_in = product of all but the last axis); norm
    scales ~ 1 + N(0, 0.1^2); everything else ~ N(0, 0.1^2). Not the models' training
    initialisation (see `train.state.host_init`): this is for tools and tests that need a
    random-weight model with no zero or constant tensors, quickly (an eager NNX build
    compiles every initialiser, tens of seconds on a small CPU).
    """

    def draw(leaf: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
        if leaf == "kernel":
            return rng.standard_normal(shape) * scale / np.sqrt(max(1, int(np.prod(shape[:-1]))))
        if leaf == "scale":
            return 1.0 + 0.1 * rng.standard_normal(shape)
        return 0.1 * rng.standard_normal(shape)

    return fill_params(model, seed, draw)
