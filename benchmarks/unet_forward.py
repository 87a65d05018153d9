"""SVD UNet forward, JAX (jitted, warm) vs diffusers PyTorch (eager), fp32 CPU, same threads.

    python benchmarks/unet_forward.py [--repeats 10] [--frames 8] [--size 32] [--ops]

Builds one tiny-but-real UNet (channels 64/128, 2 layers per block, 8 frames, 32x32
latent) in diffusers, converts it through `load_diffusers_unet`, checks the outputs agree,
and prints the median time of each side and their ratio.

--ops: where the time goes. Every Conv2d, Conv3d, GroupNorm and attention call of the
diffusers forward is recorded (forward hooks: module and input shape) and timed alone on each
side, torch's module eagerly against the same operation in XLA (`lax.conv_general_dilated`
channels-last; flax's two-pass group norm, which `models.layers.GroupNorm` replaces; for
attention only its core, torch's `scaled_dot_product_attention` against
`jax.nn.dot_product_attention` at the same (B, T, heads, head dim)), each jitted alone; the
sums per kind are printed beside the whole forward's, the remainder being the attention
projections, linear layers and element-wise work.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from diffusers import UNetSpatioTemporalConditionModel
from flax import nnx

from emotivetalk_jax.convert import load_diffusers_unet

CONFIG = dict(
    sample_size=32,
    in_channels=8,
    out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    block_out_channels=(64, 128),
    addition_time_embed_dim=32,
    projection_class_embeddings_input_dim=96,
    layers_per_block=2,
    cross_attention_dim=64,
    num_attention_heads=(2, 4),
    num_frames=8,
)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--ops", action="store_true", help="also time every conv and group norm alone on each side")
    a = p.parse_args()
    threads = os.cpu_count()
    torch.set_num_threads(threads)  # XLA's CPU backend uses every core too
    torch.manual_seed(0)
    ref = UNetSpatioTemporalConditionModel(**{**CONFIG, "num_frames": a.frames}).eval()
    with torch.no_grad():
        for prm in ref.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    n_params = sum(p.numel() for p in ref.parameters())
    b, f, s = a.batch, a.frames, a.size
    g = np.random.default_rng(0)
    x = g.standard_normal((b, f, 8, s, s)).astype(np.float32)
    ctx = g.standard_normal((b, 1, CONFIG["cross_attention_dim"])).astype(np.float32)
    ids = np.tile(np.array([[6.0, 127.0, 0.02]], np.float32), (b, 1))
    t = np.full((b,), 0.5, np.float32)

    # PyTorch first, before XLA starts its thread pool (idle XLA threads spin and would
    # slow torch down if they ran side by side).
    tx, tt, tc, ti = map(torch.from_numpy, (x, t, ctx, ids))
    torch_fn = lambda: ref(tx, tt, tc, ti, return_dict=False)[0]
    with torch.inference_mode():
        want = torch_fn().numpy()
        torch_s = _median_time(torch_fn, a.repeats)

    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp, safe_serialization=True)
        model = load_diffusers_unet(tmp)
    step = nnx.jit(lambda m, *xs: m(*xs))
    jx = (jnp.asarray(x.transpose(0, 1, 3, 4, 2)), jnp.asarray(t), jnp.asarray(ctx), jnp.asarray(ids))
    jax_fn = lambda: jax.block_until_ready(step(model, *jx))
    t0 = time.perf_counter()
    got = np.asarray(jax_fn())
    compile_s = time.perf_counter() - t0
    err = np.abs(got.transpose(0, 1, 4, 2, 3) - want).max()
    jax_s = _median_time(jax_fn, a.repeats)
    print(f"UNet {CONFIG['block_out_channels']} x{CONFIG['layers_per_block']}, {n_params / 1e6:.1f}M params, "
          f"batch {b}, {f} frames, {s}x{s} latent, fp32, {threads} threads (jax {jax.__version__}, torch {torch.__version__})")
    print(f"max |jax - torch| = {err:.2e}; jax first call (compile + run) {compile_s:.2f} s")
    print(f"{'':22}{'median s':>10}")
    print(f"{'diffusers (eager)':22}{torch_s:10.4f}")
    print(f"{'emotivetalk_jax (jit)':22}{jax_s:10.4f}")
    print(f"ratio torch / jax = {torch_s / jax_s:.2f}x")
    if a.ops:
        _ops(ref, (tx, tt, tc, ti), a.repeats, torch_s, jax_s)


class _SDPA:
    """The attention core of one diffusers `Attention` call: q (B, T, N, H), k / v (B, S, N, H)."""

    def __init__(self, q_shape: tuple[int, ...], kv_len: int):
        self.q_shape, self.kv_len = q_shape, kv_len


def _record_calls(ref, inputs) -> list[tuple[object, tuple[int, ...]]]:
    from diffusers.models.attention_processor import Attention

    calls = []
    kinds = (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.GroupNorm)
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append((m, tuple(i[0].shape))))
             for m in ref.modules() if isinstance(m, kinds)]

    def attn_hook(m, args, kwargs, out):
        x = args[0] if args else kwargs["hidden_states"]
        ctx = kwargs.get("encoder_hidden_states")
        b, t = x.shape[0], x.shape[1]
        q = (b, t, m.heads, m.inner_dim // m.heads)
        calls.append((_SDPA(q, t if ctx is None else ctx.shape[1]), q))

    hooks += [m.register_forward_hook(attn_hook, with_kwargs=True) for m in ref.modules() if isinstance(m, Attention)]
    with torch.inference_mode():
        ref(*inputs, return_dict=False)
    for h in hooks:
        h.remove()
    return calls


def _jax_op(m: torch.nn.Module, flax_norm: bool = False):
    """The XLA op of torch module `m`, channels-last, jitted (a group norm: ours, or with
    `flax_norm` flax's `nnx.GroupNorm`, which ours replaces)."""
    if isinstance(m, torch.nn.GroupNorm):
        from emotivetalk_jax.models.layers import group_norm

        norm = group_norm(m.num_channels, eps=m.eps, groups=m.num_groups, rngs=nnx.Rngs(0))
        norm.scale.value = jnp.asarray(m.weight.detach().numpy())
        norm.bias.value = jnp.asarray(m.bias.detach().numpy())
        call = (lambda x: nnx.GroupNorm.__call__(norm, x)) if flax_norm else norm
        return jax.jit(call)
    nd = m.weight.ndim - 2
    kernel = jnp.asarray(np.moveaxis(m.weight.detach().numpy(), (0, 1), (-1, -2)))  # (k..., Cin, Cout)
    bias = None if m.bias is None else jnp.asarray(m.bias.detach().numpy())
    spec = ("NHWC", "HWIO", "NHWC") if nd == 2 else ("NDHWC", "DHWIO", "NDHWC")
    pad = [(p, p) for p in m.padding]

    def conv(x):
        y = jax.lax.conv_general_dilated(x, kernel, m.stride, pad, dimension_numbers=spec)
        return y if bias is None else y + bias

    return jax.jit(conv)


def _time_sdpa(op: _SDPA, repeats: int) -> tuple[str, float, float]:
    g = np.random.default_rng(1)
    b, t, n, h = op.q_shape
    q = g.standard_normal(op.q_shape).astype(np.float32)
    kv = g.standard_normal((b, op.kv_len, n, h)).astype(np.float32)
    tq, tkv = (torch.from_numpy(np.ascontiguousarray(a.transpose(0, 2, 1, 3))) for a in (q, kv))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with torch.inference_mode():
        sdpa(tq, tkv, tkv)
        t_s = _median_time(lambda: sdpa(tq, tkv, tkv), repeats)
    fn = jax.jit(lambda a, c: jax.nn.dot_product_attention(a, c, c))
    jq, jkv = jnp.asarray(q), jnp.asarray(kv)
    jax.block_until_ready(fn(jq, jkv))
    j_s = _median_time(lambda: jax.block_until_ready(fn(jq, jkv)), repeats)
    kind = "self" if op.kv_len == t else "cross"
    return f"attention {kind} T={t}", t_s, j_s


def _ops(ref, inputs, repeats: int, torch_total: float, jax_total: float) -> None:
    rows: dict[str, list[float]] = {}

    def add(label: str, t_s: float, j_s: float) -> None:
        r = rows.setdefault(label, [0, 0.0, 0.0])
        r[0] += 1
        r[1] += t_s
        r[2] += j_s

    for m, shape in _record_calls(ref, inputs):
        if isinstance(m, _SDPA):
            add(*_time_sdpa(m, repeats))
            continue
        kind = type(m).__name__
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        tx = torch.from_numpy(x)
        with torch.inference_mode():
            m(tx)
            t_s = _median_time(lambda: m(tx), repeats)
        jx = jnp.asarray(np.moveaxis(x, 1, -1))  # channels last
        label = kind if kind == "GroupNorm" else f"{kind} {tuple(m.kernel_size)}"
        for flax_norm in (False, True) if kind == "GroupNorm" else (False,):
            fn = _jax_op(m, flax_norm)
            jax.block_until_ready(fn(jx))
            add(label + (", flax's (replaced)" if flax_norm else ""), t_s,
                _median_time(lambda: jax.block_until_ready(fn(jx)), repeats))
    print(f"\n{'op (calls)':40}{'torch s':>10}{'xla s':>10}{'torch / xla':>13}")
    for label, (n, t_s, j_s) in sorted(rows.items(), key=lambda kv: -kv[1][2]):
        print(f"{label + f' ({n})':40}{t_s:10.4f}{j_s:10.4f}{t_s / j_s:12.2f}x")
    counted = [r for label, r in rows.items() if "replaced" not in label]
    t_ops, j_ops = sum(r[1] for r in counted), sum(r[2] for r in counted)
    print(f"{'these ops, summed (ours)':40}{t_ops:10.4f}{j_ops:10.4f}{t_ops / j_ops:12.2f}x")
    print(f"{'the rest (forward - ops)':40}{torch_total - t_ops:10.4f}{jax_total - j_ops:10.4f}")


if __name__ == "__main__":
    main()
