"""Small layers shared by the SVD UNet, the temporal VAE and the EmotiveTalk additions.

Shape legend: B batch, F frames, H, W spatial, C channels, T tokens, D width, N heads.
All tensors are channels-last. Attribute names follow diffusers so that checkpoint keys
map to NNX paths by splitting on dots.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn.dtypes import canonicalize_dtype

from emotivetalk_jax.models.attention import attend


class GroupNorm(nnx.GroupNorm):
    """`nnx.GroupNorm` (the same parameters, paths and two-pass statistics) computed faster on CPU.

    Flax reduces a (B, ..., G, C / G) view over its middle axes and its minor group axis at
    once, which XLA's CPU backend runs 3-9x slower than torch (benchmarks/unet_forward.py --ops:
    GroupNorm 0.086 s against torch's 0.014 s over one UNet forward). Here each statistic is
    first a per-channel sum over the (B, S, C) view (a reduction that keeps channels minor),
    then summed over each group's channels: the same mean and the same two-pass variance,
    up to the order of the float32 sums. Masked, axis-named and fast-variance calls go to flax.
    """

    def __call__(self, x, *, mask=None):
        if (mask is not None or self.reduction_axes is not None or self.axis_name is not None
                or self.use_fast_variance):
            return super().__call__(x, mask=mask)
        scale = self.scale[...] if self.scale else None
        bias = self.bias[...] if self.bias else None
        x, scale, bias = self.promote_dtype((x, scale, bias), dtype=self.dtype)
        b, c, g = x.shape[0], x.shape[-1], self.num_groups
        xs = x.reshape(b, -1, c).astype(jnp.float32)  # (B, S, C)
        n = xs.shape[1] * (c // g)
        per_group = lambda v: jnp.repeat(v.reshape(b, g, c // g).sum(-1) / n, c // g, axis=1)[:, None]  # (B,1,C)
        d = xs - per_group(xs.sum(1))
        mul = jax.lax.rsqrt(per_group(jnp.square(d).sum(1)) + self.epsilon)
        if scale is not None:
            mul = mul * scale.astype(jnp.float32)
        y = d * mul
        if bias is not None:
            y = y + bias.astype(jnp.float32)
        out_dtype = canonicalize_dtype(*[v for v in (x, scale, bias) if v is not None], dtype=self.dtype)
        return y.reshape(x.shape).astype(out_dtype)


def group_norm(num_channels: int, *, eps: float, rngs: nnx.Rngs, groups: int = 32, dtype=None) -> GroupNorm:
    """torch.nn.GroupNorm(groups, num_channels, eps) over channels-last input.

    Statistics run over every axis but batch and channels, so a (B, F, H, W, C) input is
    normalised over frames and space jointly, as torch does for (B, C, F, H, W).
    """
    return GroupNorm(
        num_channels, num_groups=groups, epsilon=eps, use_fast_variance=False, dtype=dtype, rngs=rngs
    )


def layer_norm(dim: int, *, eps: float = 1e-5, rngs: nnx.Rngs, dtype=None) -> nnx.LayerNorm:
    """torch.nn.LayerNorm(dim, eps) (two-pass variance, like torch)."""
    return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, dtype=dtype, rngs=rngs)


def conv(
    cin: int,
    cout: int,
    kernel: int | tuple[int, ...],
    *,
    rngs: nnx.Rngs,
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] | str = 0,
    bias: bool = True,
    ndim: int = 2,
    dtype=None,
) -> nnx.Conv:
    """torch.nn.Conv{1,2,3}d with symmetric integer padding, channels-last."""
    kernel = (kernel,) * ndim if isinstance(kernel, int) else tuple(kernel)
    stride = (stride,) * ndim if isinstance(stride, int) else tuple(stride)
    if isinstance(padding, int):
        padding = ((padding, padding),) * ndim
    elif isinstance(padding, tuple):
        padding = tuple((p, p) for p in padding)
    return nnx.Conv(
        cin, cout, kernel, strides=stride, padding=padding, use_bias=bias, dtype=dtype, rngs=rngs
    )


def linear(din: int, dout: int, *, rngs: nnx.Rngs, bias: bool = True, dtype=None) -> nnx.Linear:
    return nnx.Linear(din, dout, use_bias=bias, dtype=dtype, rngs=rngs)


class Attention(nnx.Module):
    """diffusers `Attention` for token inputs: (B, T, D) queries, optional (B, S, Dc) context.

    Keys: `to_q`, `to_k`, `to_v`, `to_out.0`. Computed by `attention.attend` (the backend policy);
    `attention_impl` None follows the process default.
    """

    def __init__(
        self,
        query_dim: int,
        *,
        heads: int,
        dim_head: int,
        rngs: nnx.Rngs,
        cross_attention_dim: int | None = None,
        bias: bool = False,
        out_bias: bool = True,
        dtype=None,
    ):
        inner = heads * dim_head
        kv_dim = cross_attention_dim or query_dim
        self.heads = heads
        self.attention_impl: str | None = None
        self.to_q = linear(query_dim, inner, bias=bias, rngs=rngs, dtype=dtype)
        self.to_k = linear(kv_dim, inner, bias=bias, rngs=rngs, dtype=dtype)
        self.to_v = linear(kv_dim, inner, bias=bias, rngs=rngs, dtype=dtype)
        self.to_out = nnx.List([linear(inner, query_dim, bias=out_bias, rngs=rngs, dtype=dtype)])

    def __call__(self, x: jax.Array, context: jax.Array | None = None, mask: jax.Array | None = None) -> jax.Array:
        context = x if context is None else context
        split = lambda t: t.reshape(*t.shape[:-1], self.heads, t.shape[-1] // self.heads)
        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        out = attend(q, k, v, mask=mask, implementation=self.attention_impl)
        return self.to_out[0](out.reshape(*out.shape[:-2], -1))


def timestep_embedding(
    timesteps: jax.Array,
    dim: int,
    *,
    flip_sin_to_cos: bool = False,
    downscale_freq_shift: float = 1.0,
    scale: float = 1.0,
    max_period: int = 10000,
) -> jax.Array:
    """diffusers `get_timestep_embedding`: (N,) -> (N, dim) sinusoids, in float32."""
    half = dim // 2
    exponent = -jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - downscale_freq_shift)
    emb = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :] * scale
    emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2 == 1:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nnx.Module):
    """diffusers `TimestepEmbedding`: linear_1 -> SiLU -> linear_2."""

    def __init__(self, in_channels: int, time_embed_dim: int, *, rngs: nnx.Rngs, out_dim: int | None = None, dtype=None):
        self.linear_1 = linear(in_channels, time_embed_dim, rngs=rngs, dtype=dtype)
        self.linear_2 = linear(time_embed_dim, out_dim or time_embed_dim, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_2(jax.nn.silu(self.linear_1(x)))


class _CountedKeys:
    """Stands in for `nnx.Rngs` while a model is built under a trace (`nnx.eval_shape`, jit).

    `nnx.Rngs` keeps a traced counter, and with flax 0.12 / jax 0.10 every increment asks the
    tracer for `.sharding`, whose error message walks the whole jaxpr, so an abstract build
    grows quadratically with the parameter count (SVD-XT: ~45 s instead of ~2.5 s).
    Folding a Python counter into one key avoids it.
    """

    def __init__(self, key: jax.Array):
        self._key, self._count = key, 0

    def params(self) -> jax.Array:
        self._count += 1
        return jax.random.fold_in(self._key, self._count)

    __call__ = params


def trace_safe_rngs(rngs: nnx.Rngs) -> nnx.Rngs | _CountedKeys:
    """`rngs`, or a cheap stand-in when building under a trace (see `_CountedKeys`)."""
    key = rngs.params()
    return _CountedKeys(key) if isinstance(key, jax.core.Tracer) else rngs


def cast_params(model: nnx.Module, dtype) -> nnx.Module:
    """Store every `nnx.Param` of `model` in `dtype` (in place); float32 is a no-op."""
    if dtype is not None and jnp.dtype(dtype) != jnp.float32:
        params = nnx.state(model, nnx.Param)
        nnx.update(model, jax.tree.map(lambda p: p.astype(dtype), params))
    return model


def frozen(module: nnx.Module) -> nnx.Module:
    """A copy of `module` whose parameters pass no gradient."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.lax.stop_gradient(state))


def param_count(model: nnx.Module, *filters) -> int:
    """Scalar parameters of a (possibly abstract) model matching all `filters` (default nnx.Param)."""
    state = nnx.state(model, nnx.All(nnx.Param, *filters) if filters else nnx.Param)
    return int(sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(state)))
