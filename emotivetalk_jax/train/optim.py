"""Optimisers: optax Adam / AdamW with schedules and clipping, and 8-bit Adam.

8-bit Adam (the paper's stage-2 optimiser, bitsandbytes' Adam8bit) keeps both moments
block-wise quantised: each moment tensor is flattened into blocks of `block_size`
elements, every block stores one float32 absmax and one byte per element.
each element y = x / absmax is stored as the uint8 index of the nearest value of
bitsandbytes' dynamic code (`dynamic_code`: a signed one for m, an unsigned one for v),
which keeps relative precision from 1 down to 1e-7. Tensors under `min_8bit_size` elements keep float32
moments (bitsandbytes' default 4096). The quantised moments keep the parameter's shape,
so they shard exactly like the parameter (`sharding.opt_state_shardings`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class QTensor(NamedTuple):
    """A block-wise quantised tensor: q (the tensor's shape, int8 / uint8), scale (blocks,) float32."""

    q: jax.Array
    scale: jax.Array


def _blocks(x: jax.Array, block: int) -> jax.Array:
    """(k, n) -> (k, nb, block), zero-padded."""
    pad = (-x.shape[1]) % block
    return jnp.pad(x, ((0, 0), (0, pad))).reshape(x.shape[0], -1, block)


# The code: bitsandbytes' dynamic 8-bit map (`create_dynamic_map`). Exponent e = 0..6 scales
# 10^(e - 6); group e holds n_e = 2^e (signed) or 2^(e + 1) (unsigned) values
# 10^(e - 6) (0.1 + 0.9 (j + 0.5) / n_e), j < n_e, plus the values 0 and 1. Code k of a group
# starts at n_e - 1 (signed) or n_e - 2 (unsigned). Signed bytes are 128 * sign + k with
# k = 127 meaning 1 (sign 0) or 0 (sign 1); unsigned k = 254 is 0 and 255 is 1.
# Encoding and decoding are elementwise arithmetic (no table search), which keeps the
# compiled update small.


def _pow10(e: jax.Array) -> jax.Array:
    """10^(e - 6) for integer e in [0, 6]: a 7-entry table lookup (no transcendental functions)."""
    return jnp.asarray(np.float32(10.0) ** np.arange(-6, 1, dtype=np.float32))[e]


def _encode(a: jax.Array, signed: bool) -> jax.Array:
    """|y| in [0, 1] -> k (int32). Comparisons and selects only: transcendental functions make
    the compiled update large (each fusion carries their expansions)."""
    e = sum((a >= 10.0 ** (i - 7)).astype(jnp.int32) for i in range(1, 7))  # group e spans [1e-7, 1e-6) * 10^e
    n = jnp.left_shift(1, e if signed else e + 1).astype(jnp.float32)
    frac = a / _pow10(e)
    j = jnp.clip(jnp.round((frac - 0.1) / 0.9 * n - 0.5), 0, n - 1)
    k = (n - 1 if signed else n - 2) + j
    top, zero = (127, 128) if signed else (255, 254)
    k = jnp.where(a >= (1.0 + 0.1 + 0.9 * (n - 0.5) / n) / 2, top, k)  # nearer to 1 than to group 6's top
    smallest = 0.55e-6 if signed else 0.325e-6
    return jnp.where(a < smallest / 2, zero, k).astype(jnp.int32)


def _decode(k: jax.Array, signed: bool) -> jax.Array:
    """k (int32) -> |y| (float32); the special codes are handled by the caller."""
    first = [(1 << i) - 1 if signed else (1 << (i + 1)) - 2 for i in range(7)]  # first code of group i
    e = sum((k >= first[i]).astype(jnp.int32) for i in range(1, 7))
    n = jnp.left_shift(1, e if signed else e + 1)
    j = (k - (n - 1 if signed else n - 2)).astype(jnp.float32)
    return _pow10(e) * (0.1 + 0.9 * (j + 0.5) / n.astype(jnp.float32))


def _quantize_rows(x: jax.Array, block: int, signed: bool) -> tuple[jax.Array, jax.Array]:
    """(k, n) float32 -> q (k, n) uint8, absmax (k, nb): rows are quantised independently."""
    n = x.shape[1]
    b = _blocks(x.astype(jnp.float32), block)
    absmax = jnp.max(jnp.abs(b), axis=2)
    y = b / jnp.where(absmax > 0, absmax, 1.0)[..., None]
    k = _encode(jnp.abs(y), signed)
    if signed:
        neg = (y < 0).astype(jnp.int32)
        k = jnp.where(k == 127, 127 - neg, k)  # no -1 in the code: the largest negative value instead
        byte = jnp.where(k == 128, 255, k + 128 * neg)
    else:
        byte = k
    return byte.astype(jnp.uint8).reshape(x.shape[0], -1)[:, :n], absmax


def _code_table(signed: bool) -> np.ndarray:
    """Value of every byte (256,), computed once on the host with `_decode`."""
    byte = np.arange(256)
    if signed:
        k, neg = byte % 128, byte >= 128
        mag = np.where(k == 127, np.where(neg, 0.0, 1.0), np.asarray(_decode(jnp.minimum(k, 126), True)))
        return np.where(neg, -mag, mag).astype(np.float32)
    return np.where(byte == 255, 1.0, np.where(byte == 254, 0.0, np.asarray(_decode(jnp.minimum(byte, 253), False))))


_TABLES: dict[bool, np.ndarray] = {}


def _dequantize_rows(q: jax.Array, absmax: jax.Array, block: int, signed: bool) -> jax.Array:
    if signed not in _TABLES:
        with jax.ensure_compile_time_eval():
            _TABLES[signed] = _code_table(signed).astype(np.float32)
    n = q.shape[1]
    y = jnp.asarray(_TABLES[signed])[_blocks(q, block).astype(jnp.int32)]  # one gather from the 256-entry code
    return (y * absmax[..., None]).reshape(q.shape[0], -1)[:, :n]


def quantize(x: jax.Array, block: int, signed: bool) -> QTensor:
    """float32 -> QTensor: per block of the flattened tensor, y = x / absmax as a byte of the dynamic code."""
    q, absmax = _quantize_rows(x.reshape(1, -1), block, signed)
    return QTensor(q.reshape(x.shape), absmax[0])


def quantized_zeros(shape: tuple[int, ...], block: int, signed: bool) -> QTensor:
    """`quantize(zeros(shape))` built directly (no per-shape compile): every byte is the code of
    0 (255 signed, 254 unsigned) and every block's absmax is 0."""
    n = int(np.prod(shape))
    return QTensor(jnp.full(shape, 255 if signed else 254, jnp.uint8), jnp.zeros((-(-n // block),), jnp.float32))


def dequantize(t: QTensor, block: int, signed: bool) -> jax.Array:
    return _dequantize_rows(t.q.reshape(1, -1), t.scale[None], block, signed).reshape(t.q.shape)


def dynamic_code(signed: bool) -> np.ndarray:
    """The 256 code values (sorted; the signed code has no -1), for reference and tests."""
    k = jnp.arange(256)
    vals = dequantize(QTensor(k.astype(jnp.uint8), jnp.ones((1,))), 256, signed)
    return np.sort(np.asarray(vals))


class ScaleByAdam8bitState(NamedTuple):
    count: jax.Array
    mu: Any  # per parameter: QTensor, or a float32 array for small parameters
    nu: Any


def scale_by_adam_8bit(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *, block_size: int = 256,
                       min_8bit_size: int = 4096) -> optax.GradientTransformation:
    """Adam's scaling with block-wise 8-bit moments (a drop-in for `optax.scale_by_adam`)."""

    def small(p) -> bool:
        return int(np.prod(p.shape)) < min_8bit_size

    def init_fn(params):
        def zeros(p, signed):
            return jnp.zeros(p.shape, jnp.float32) if small(p) else quantized_zeros(p.shape, block_size, signed)

        return ScaleByAdam8bitState(
            count=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(lambda p: zeros(p, True), params),
            nu=jax.tree.map(lambda p: zeros(p, False), params),
        )

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        c1 = 1 - b1 ** count.astype(jnp.float32)
        c2 = 1 - b2 ** count.astype(jnp.float32)
        is_q = lambda x: isinstance(x, QTensor)
        g_leaves, treedef = jax.tree.flatten(updates)
        m_leaves = treedef.flatten_up_to(state.mu)
        v_leaves = treedef.flatten_up_to(state.nu)
        u_out, m_out, v_out = [None] * len(g_leaves), list(m_leaves), list(v_leaves)

        def adam(g, m, v):
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            return (m / c1) / (jnp.sqrt(v / c2) + eps), m, v

        # Quantised moments of same-shaped parameters are updated stacked: a few large ops
        # instead of many small ones (compile time), each row with its own blocks.
        by_shape: dict[tuple, list[int]] = {}
        for i, (g, m) in enumerate(zip(g_leaves, m_leaves)):
            if is_q(m):
                by_shape.setdefault(tuple(g.shape), []).append(i)
            else:
                u, m_out[i], v_out[i] = adam(g.astype(jnp.float32), m, v_leaves[i])
                u_out[i] = u.astype(g.dtype)
        for shape, idx in by_shape.items():
            g = jnp.stack([g_leaves[i].astype(jnp.float32).reshape(-1) for i in idx])
            m = _dequantize_rows(jnp.stack([m_leaves[i].q.reshape(-1) for i in idx]),
                                 jnp.stack([m_leaves[i].scale for i in idx]), block_size, True)
            v = _dequantize_rows(jnp.stack([v_leaves[i].q.reshape(-1) for i in idx]),
                                 jnp.stack([v_leaves[i].scale for i in idx]), block_size, False)
            u, m, v = adam(g, m, v)
            mq, ms = _quantize_rows(m, block_size, True)
            vq, vs = _quantize_rows(v, block_size, False)
            for r, i in enumerate(idx):
                u_out[i] = u[r].reshape(shape).astype(g_leaves[i].dtype)
                m_out[i] = QTensor(mq[r].reshape(shape), ms[r])
                v_out[i] = QTensor(vq[r].reshape(shape), vs[r])
        return (treedef.unflatten(u_out),
                ScaleByAdam8bitState(count=count, mu=treedef.unflatten(m_out), nu=treedef.unflatten(v_out)))

    return optax.GradientTransformation(init_fn, update_fn)


def adam_8bit(learning_rate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
              **kw) -> optax.GradientTransformation:
    """Adam (AdamW with `weight_decay` > 0) with 8-bit block-wise moments."""
    parts = [scale_by_adam_8bit(b1, b2, eps, **kw)]
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)


def make_schedule(cfg) -> optax.Schedule:
    """`cfg`: lr, schedule ('constant' | 'cosine' | 'linear'), warmup_steps, total_steps, end_lr_factor."""
    lr, warm, total = float(cfg.lr), int(cfg.warmup_steps), max(int(cfg.total_steps), 1)
    if cfg.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, max(total - warm, 1), alpha=float(cfg.end_lr_factor))
    elif cfg.schedule == "linear":
        main = optax.linear_schedule(lr, lr * float(cfg.end_lr_factor), max(total - warm, 1))
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose constant, cosine or linear")
    if warm <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), main], [warm])


def make_optimizer(cfg) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(tx, schedule) from an optimiser config: name ('adam' | 'adamw' | 'adam8bit' | 'adamw8bit'),
    b1, b2, eps, weight_decay, grad_clip (global norm, 0 = off), block_size, min_8bit_size
    and the schedule fields of `make_schedule`."""
    schedule = make_schedule(cfg)
    name = cfg.name
    wd = float(cfg.weight_decay) if name.startswith("adamw") else 0.0
    if name in ("adam", "adamw"):
        base = (optax.adamw(schedule, cfg.b1, cfg.b2, cfg.eps, weight_decay=wd) if wd
                else optax.adam(schedule, cfg.b1, cfg.b2, cfg.eps))
    elif name in ("adam8bit", "adamw8bit"):
        base = adam_8bit(schedule, cfg.b1, cfg.b2, cfg.eps, weight_decay=wd, block_size=int(cfg.block_size),
                         min_8bit_size=int(cfg.min_8bit_size))
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose adam, adamw, adam8bit or adamw8bit")
    if cfg.grad_clip and cfg.grad_clip > 0:
        base = optax.chain(optax.clip_by_global_norm(float(cfg.grad_clip)), base)
    return base, schedule


def scaled_updates(tx: optax.GradientTransformation, scales: Any) -> optax.GradientTransformation:
    """`tx` with its updates multiplied leaf by leaf by `scales` (floats, shaped like the params):
    per-parameter learning-rate multipliers. Its state is `tx`'s own, so a checkpoint written
    without the multipliers resumes with them and back."""

    def update(updates, state, params=None, **extra):
        out, state = tx.update(updates, state, params, **extra)
        return jax.tree.map(lambda u, k: u if k == 1.0 else u * jnp.asarray(k, u.dtype), out, scales), state

    return optax.GradientTransformationExtraArgs(tx.init, update)


def lr_scales(params: Any, scale_of) -> Any | None:
    """{path: multiplier} as a tree like `params` from `scale_of(path names) -> float`; None when
    every multiplier is 1."""
    scales = jax.tree_util.tree_map_with_path(
        lambda path, _: float(scale_of(tuple(str(getattr(k, "key", k)) for k in path))), params)
    return None if all(k == 1.0 for k in jax.tree.leaves(scales)) else scales


def state_bytes(tree: Any) -> int:
    """Bytes held by the arrays of a (possibly abstract) pytree."""
    return int(sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)
                   if hasattr(x, "dtype")))
