"""Whole-length video sampling: DDIM in sigma space as one jitted `lax.scan` with window fusion.

Shape legend: B batch, N real frames, Np padded frames (the length bucket), T window,
K windows per step (bucketed), c windows per backbone call, R guidance branches,
H, W latent size, C latent channels (4), Cr reference channels.

Every step (3.4, 6.4; REFERENCE.md §3): the whole noisy latent (B, Np, H, W, C) is cut into
windows of T frames with overlap O that lie inside the N real frames; each window is
denoised by D(x; sigma) with its own slice of the per-frame conditions, the per-video
conditions and the reference latent; window predictions are guided, weighted by
`fusion_weights(T)`, summed and divided by the summed weights, and ONE DDIM step is taken
on the whole sequence. Nothing autoregressive: any length, no error accumulation.

Compilation: one program per (config, window, overlap, length bucket, shapes of the
conditions). The real length and the window starts are data; frames beyond N are padding
that no window covers, so they never influence a real frame. Lengths N <= T run as one
exact window of N frames (a program per such N; padding a window would leak through the
backbone's temporal layers). The programs are lowered and compiled ahead of time by
`sample` itself, keyed by their static settings and input shapes; `compiled_programs()`
counts them. `sample(callback=...)` is called on the host after every step of the one
program (progress bars); the step-by-step use (`sigmas` a pair, `first_step` the index)
draws the same per-step noise as the one program.

Two kinds (`SamplerConfig.kind`): "ddim" (the paper's; any backbone) and "consistency" (a
student of stage `student`, `diffusion.consistency`): every step the fused x0 is the
consistency function f(x, sigma) (the fused D under the boundary condition: fusion is linear
and c_skip x is the same in every window), then re-noised to the next sigma,
x = x0 + sigma_next z; one branch, the guidance being folded into the student.

Inpainting (`known`, `known_frames`): the first frames of the sequence are held at given clean
latents, re-noised to every step's sigma (x = known + sigma z), and end exactly equal to them:
streaming generation continues a video from the frames it already emitted.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from emotivetalk_jax.diffusion.consistency import GRID, SIGMA_HI, SIGMA_LO, consistency_fn, student_sigmas
from emotivetalk_jax.diffusion.ddim import ddim_step
from emotivetalk_jax.diffusion.edm import RHO, SIGMA_MAX, SIGMA_MIN, denoise, karras_sigmas
from emotivetalk_jax.diffusion.guidance import (
    Branches,
    Conditions,
    branch_list,
    combine,
    frame_scale,
    guidance_mode,
    ramp_profile,
)
from emotivetalk_jax.diffusion.windows import bucket_length, fusion_weights, traced_window_starts
from emotivetalk_jax.models.ethd_variants import InferenceConfig

Backbone = Callable[..., jax.Array]  # (sample (B, T, H, W, C + Cr), c_noise (B,), **conditions) -> (B, T, H, W, C)


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Sampler settings. Paper (6.4): 25 DDIM steps; 512: window 120 / overlap 24; 1024: 32 / 12.

    lip_scale / expr_scale: CFG scales of the audio-lip and expression conditions (1: off).
    This core defaults to off because guidance needs `Branches`; the paper runs two branches
    (its cost tables count two UNet forwards per step, REFERENCE.md 9), and the variants'
    `InferenceConfig.guidance_scale`, the bundles and the 512 / 1024 presets of
    `configs/sampler.py` turn them on. guidance: "auto" picks the fewest branches for the
    scales (lip_scale 1 with expr_scale != 1: the two-branch "expression" mode); "none" /
    "joint" / "expression" / "dual" force a branch set.
    ramp: optional (r_start, r_end) linear per-frame guidance profile, s_f = 1 + r_f (s - 1),
    over each window's frames (ramp_over "window", SVD's style) or over the video ("video").
    batch_windows: windows per backbone call (1: scan over windows, least memory; 0: all
    windows of a step in one batched call). Guidance branches are always batched.
    length_buckets: explicit padded lengths (frames); beyond them, window counts are
    rounded up a geometric ladder with `bucket_per_octave` rungs per doubling.
    kind: "ddim" or "consistency" (a distilled student: `steps` from 1, guidance off, sigmas
    `consistency.student_sigmas(steps, grid, sigma_hi, sigma_lo)`).
    sigma_start: 0 starts from pure noise at sigma_max; > 0 starts from given clean latents (in
    the pipeline, the reference frame's) noised to sigma_start (SDEdit-style: `sample(start=)`),
    the schedule running from there (Karras for DDIM, the nearest grid point for a student).
    """

    steps: int = InferenceConfig.steps  # the paper's numbers are written once, in models/ethd_variants.py
    window: int = InferenceConfig.window
    overlap: int = InferenceConfig.overlap
    eta: float = 0.0
    lip_scale: float = 1.0
    expr_scale: float = 1.0
    guidance: str = "auto"
    ramp: tuple[float, float] | None = None
    ramp_over: str = "window"
    batch_windows: int = 1
    length_buckets: tuple[int, ...] = ()
    bucket_per_octave: int = 4
    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    rho: float = RHO
    kind: str = "ddim"
    grid: int = GRID
    sigma_hi: float = SIGMA_HI
    sigma_lo: float = SIGMA_LO
    sigma_start: float = 0.0

    def __post_init__(self):
        if self.ramp_over not in ("window", "video"):
            raise ValueError(f"ramp_over must be 'window' or 'video', got {self.ramp_over!r}")
        if self.steps < 1 or self.batch_windows < 0 or self.eta < 0 or not 0 <= self.sigma_start < self.sigma_max:
            raise ValueError(f"bad sampler config {self}")
        if self.kind not in KINDS:
            raise ValueError(f"sampler kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        mode = guidance_mode(self.lip_scale, self.expr_scale, self.guidance)  # validates
        if self.kind == "consistency" and (mode != "none" or self.eta > 0):
            raise ValueError("a consistency student has its guidance folded in and its own noise: sample it with "
                             f"lip_scale = expr_scale = 1 and eta = 0 (got {self.lip_scale}, {self.expr_scale}, "
                             f"{self.eta})")

    def sigmas(self) -> jax.Array:
        if self.kind == "consistency":
            return jnp.asarray(student_sigmas(self.steps, self.grid, self.sigma_hi, self.sigma_lo, self.sigma_min,
                                              self.sigma_max, self.sigma_start))
        return karras_sigmas(self.steps, self.sigma_min, self.sigma_start or self.sigma_max, self.rho)


KINDS = ("ddim", "consistency")


@dataclasses.dataclass(frozen=True)
class _Static:
    """Everything static about one compiled program."""

    window: int
    overlap: int
    max_windows: int
    chunk: int
    mode: str
    stochastic: bool
    trajectory: bool
    latent_shape: tuple[int, ...]  # (B, Np, H, W, C)
    kind: str = "ddim"
    sigma_min: float = SIGMA_MIN
    known_frames: int = 0  # the first frames held at `SamplerState.known` (inpainting)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SamplerState:
    """The data of one sampling program (all arrays; the static part is `_Static`).

    noise (B, Np, H, W, C) standard normal, or None to draw it from `key`; branches: one
    `Conditions` per guidance branch, padded to Np frames; num_frames () the real N; sigmas
    (S + 1,); scales (2,) = (lip, expr); profile_video (Np,), profile_window (T,) the
    guidance ramps; eta (); key; first_step () the index of sigmas[0] in the whole schedule
    (the per-step noise of step i is drawn from fold_in(key', first_step + i)); known
    (B, Np, H, W, C) or None: clean latents the first `_Static.known_frames` frames are held at;
    start (B, Np, H, W, C) or None: clean latents sampling starts from, noised to sigmas[0].
    """

    noise: jax.Array | None
    branches: tuple[Conditions, ...]
    num_frames: jax.Array
    sigmas: jax.Array
    scales: jax.Array
    profile_video: jax.Array
    profile_window: jax.Array
    eta: jax.Array
    key: jax.Array
    first_step: jax.Array
    known: jax.Array | None = None
    start: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static shapes chosen for a real length: window used, padded frames, window slots, windows per call."""

    num_frames: int
    window: int
    padded: int
    max_windows: int
    chunk: int


def plan(num_frames: int, config: SamplerConfig) -> Plan:
    """The length bucket of `num_frames` frames under `config`."""
    t, _, k = bucket_length(num_frames, config.window, config.overlap, length_buckets=config.length_buckets,
                            per_octave=config.bucket_per_octave)
    c = k if config.batch_windows == 0 else min(config.batch_windows, k)
    k = -(-k // c) * c
    padded = num_frames if t == num_frames else t + (k - 1) * (t - config.overlap)
    return Plan(num_frames, t, padded, k, c)


class _FunctionBackbone(nnx.Module):
    """A plain function as a (parameter-free) NNX module, so every backbone goes through `nnx.jit`."""

    def __init__(self, fn: Backbone):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def _frame_noise(key: jax.Array, frames: int, shape: tuple[int, ...]) -> jax.Array:
    """Standard normal (B, frames, ...) with frame f drawn from fold_in(key, f): independent of padding."""
    per = jax.vmap(lambda f: jax.random.normal(jax.random.fold_in(key, f), shape))(jnp.arange(frames))
    return jnp.moveaxis(per, 0, 1)


def _gather(a: jax.Array, starts: jax.Array, t: int) -> jax.Array:
    """Windows of a per-frame leaf (B, Np, ...) -> (c, B, T, ...)."""
    return jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(a, s, t, axis=1))(starts)


def _window_conditions(cond: Conditions, starts: jax.Array, t: int) -> Conditions:
    """One branch's conditions for c windows, each leaf (c, B, ...) (reference: (c, B, T, H, W, Cr))."""
    c = starts.shape[0]
    tile = lambda v: jnp.broadcast_to(v[None], (c,) + v.shape)
    ref = cond.reference
    if ref is not None:
        ref = jnp.broadcast_to(ref[None, :, None], (c, ref.shape[0], t) + ref.shape[1:])
    return Conditions(
        ref,
        {k: _gather(v, starts, t) for k, v in cond.frame.items()},
        {k: tile(v) for k, v in cond.video.items()},
    )


def _with_reference(backbone: Backbone) -> Backbone:
    """F(c_in x, c_noise, reference, **kw) = backbone(concat(c_in x, reference), c_noise, **kw)."""

    def f(xs, c_noise, reference, **kw):
        if reference is not None:
            xs = jnp.concatenate([xs, reference.astype(xs.dtype)], axis=-1)
        return backbone(xs, c_noise, **kw)

    return f


def _denoise_windows(
    backbone: Backbone,
    x: jax.Array,
    sigma: jax.Array,
    branches: tuple[Conditions, ...],
    starts: jax.Array,
    t: int,
    mode: str,
    lip: jax.Array,
    expr: jax.Array,
) -> jax.Array:
    """Guided x0 of c windows: x (B, Np, H, W, C), starts (c,), lip/expr scales (c, T) -> (c, B, T, H, W, C)."""
    xs = _gather(x, starts, t)  # (c, B, T, H, W, C)
    r = len(branches)
    conds = jax.tree.map(lambda *v: jnp.stack(v), *[_window_conditions(b, starts, t) for b in branches])
    flat = lambda v: v.reshape((-1,) + v.shape[3:])  # (R, c, B, ...) -> (R*c*B, ...)
    x_in = flat(jnp.broadcast_to(xs[None], (r,) + xs.shape))
    conds = jax.tree.map(flat, conds)
    x0 = denoise(_with_reference(backbone), x_in, sigma, conds.reference, **conds.frame, **conds.video)
    x0 = x0.reshape((r,) + xs.shape)
    per_frame = lambda s: s[:, None, :, None, None, None].astype(x0.dtype)  # (c, T) -> (c, 1, T, 1, 1, 1)
    return combine(x0, mode, per_frame(lip), per_frame(expr))


def _step_done(step) -> None:
    """Host side of the per-step callback: the `callback` of the running `sample`, if any."""
    if _CALLBACK[0] is not None:
        _CALLBACK[0](int(step))


_CALLBACK: list[Callable[[int], None] | None] = [None]  # set by `sample` while its program runs


def _sample_core(static: _Static, graphdef: nnx.GraphDef, params, state: SamplerState):
    """The jitted loop (see `SamplerState`)."""
    model = nnx.merge(graphdef, params)
    noise, branches, num_frames, sigmas = state.noise, state.branches, state.num_frames, state.sigmas
    scales, profile_video, profile_window, eta, key = (state.scales, state.profile_video, state.profile_window,
                                                       state.eta, state.key)
    t, k, c = static.window, static.max_windows, static.chunk
    b, n_pad = static.latent_shape[:2]
    key_noise, key = jax.random.split(key)
    if noise is None:
        noise = _frame_noise(key_noise, n_pad, (b,) + static.latent_shape[2:])
    if state.start is None:
        x = noise.astype(jnp.float32) * jnp.sqrt(sigmas[0] ** 2 + 1.0)  # SVD's init_noise_sigma
    else:
        x = state.start.astype(jnp.float32) + sigmas[0] * noise.astype(jnp.float32)
    held = jnp.arange(n_pad)[None, :, None, None, None] < static.known_frames

    def hold(x, sigma, z):  # the known frames, re-noised to sigma
        return x if state.known is None else jnp.where(held, state.known.astype(x.dtype) + sigma * z, x)

    x = hold(x, sigmas[0], noise.astype(jnp.float32))
    single = k == 1 and t == n_pad  # one exact window: plain DDIM on the whole sequence, no fusion
    if single:
        starts, valid = jnp.zeros((1,), jnp.int32), jnp.ones((1,), bool)
    else:
        starts, valid = traced_window_starts(num_frames, t, static.overlap, k)
    w = fusion_weights(t)
    frame_valid = (jnp.arange(n_pad) < num_frames)[None, :, None, None, None]

    def window_scales(s):  # (c,) starts -> per-window-frame (lip, expr) scales (c, T)
        r = _gather(profile_video[None], s, t)[:, 0] * profile_window[None]
        return frame_scale(scales[0], r), frame_scale(scales[1], r)

    def add_window(acc, s, contrib):
        cur = jax.lax.dynamic_slice_in_dim(acc, s, t, axis=1)
        return jax.lax.dynamic_update_slice_in_dim(acc, cur + contrib, s, axis=1)

    # Summed fusion weight per frame; 0 on padding (no window there).
    wcol = w[None, :, None, None, None]
    wsum = jax.lax.fori_loop(0, k, lambda j, a: add_window(a, starts[j], jnp.where(valid[j], wcol, 0.0)),
                             jnp.zeros((1, n_pad, 1, 1, 1), jnp.float32))
    wsum = jnp.where(wsum > 0, wsum, 1.0)

    def fused_x0(x, sigma):
        if single:
            lip, expr = window_scales(starts)
            return _denoise_windows(model, x, sigma, branches, starts, t,
                                    static.mode, lip, expr)[0]

        def chunk_body(acc, inp):
            s, v = inp
            lip, expr = window_scales(s)
            pred = _denoise_windows(model, x, sigma, branches, s, t,
                                    static.mode, lip, expr)
            wp = wcol.astype(pred.dtype)
            acc = jax.lax.fori_loop(0, c, lambda j, a: add_window(a, s[j], jnp.where(v[j], pred[j] * wp, 0.0)), acc)
            return acc, None

        acc, _ = jax.lax.scan(chunk_body, jnp.zeros_like(x), (starts.reshape(-1, c), valid.reshape(-1, c)))
        return acc / wsum.astype(acc.dtype)

    def step(x, inp):
        i, sigma, sigma_next = inp
        x0 = fused_x0(x, sigma)
        z = None
        if static.stochastic or static.kind == "consistency" or static.known_frames:
            z = _frame_noise(jax.random.fold_in(key, state.first_step + i), n_pad, (b,) + x.shape[2:]).astype(x.dtype)
        if static.kind == "consistency":
            x_next = consistency_fn(x, x0, sigma, static.sigma_min) + sigma_next.astype(x.dtype) * z
        elif static.stochastic:
            x_next = ddim_step(x, x0, sigma, sigma_next, eta, z)
        else:
            x_next = ddim_step(x, x0, sigma, sigma_next)
        x_next = jnp.where(frame_valid, hold(x_next, sigma_next, z) if static.known_frames else x_next, x)
        jax.debug.callback(_step_done, state.first_step + i)
        return x_next, (x_next if static.trajectory else None)

    steps = sigmas.shape[0] - 1
    x, traj = jax.lax.scan(step, x, (jnp.arange(steps), sigmas[:-1], sigmas[1:]))
    return x, traj


_PROGRAMS: dict[tuple, jax.stages.Compiled] = {}  # compiled ahead of time by `_program`


def _signature(tree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((jnp.shape(x), jnp.result_type(x), getattr(x, "weak_type", False)) for x in leaves)


def _static_key(graphdef: nnx.GraphDef):
    try:
        hash(graphdef)
        return graphdef
    except TypeError:  # a module with a dict attribute (a diffusers config): its text stands for it
        return repr(graphdef)


def _lower(static: _Static, graphdef: nnx.GraphDef, params, state: SamplerState) -> jax.stages.Lowered:
    return jax.jit(functools.partial(_sample_core, static, graphdef)).lower(params, state)


def _program(static: _Static, graphdef: nnx.GraphDef, params, state: SamplerState) -> jax.stages.Compiled:
    """The compiled program for these settings and input shapes (lowered and compiled once)."""
    key = (static, _static_key(graphdef), _signature((params, state)))
    if key not in _PROGRAMS:
        _PROGRAMS[key] = _lower(static, graphdef, params, state).compile()
    return _PROGRAMS[key]


def compiled_programs() -> int:
    """Number of sampling programs compiled so far (one per static settings and input shapes)."""
    return len(_PROGRAMS)


def _num_frames(cond: Conditions) -> int | None:
    lens = {v.shape[1] for v in cond.frame.values()}
    if len(lens) > 1:
        raise ValueError(f"per-frame conditions disagree on the number of frames: {sorted(lens)}")
    return lens.pop() if lens else None


def _pad_frames(cond: Conditions, n_pad: int) -> Conditions:
    pad = lambda v: jnp.pad(v, [(0, 0), (0, n_pad - v.shape[1])] + [(0, 0)] * (v.ndim - 2))
    return cond._replace(frame={k: pad(v) for k, v in cond.frame.items()})


def _prepare(backbone, conditions, key, config, num_frames, latent_shape, noise, sigmas, return_trajectory,
             first_step=0, known=None, start=None):
    """Validate, pick the bucket and pad: -> (real length, the jitted core's arguments)."""
    branches = conditions if isinstance(conditions, Branches) else Branches(conditions)
    mode = guidance_mode(config.lip_scale, config.expr_scale, config.guidance)
    conds = branch_list(branches, mode)
    cond = conds[0]
    have = _num_frames(cond)
    n = num_frames if num_frames is not None else have if have is not None else (
        noise.shape[1] if noise is not None else None)
    if n is None:
        raise ValueError("cannot tell the number of frames: pass num_frames, per-frame conditions or noise")
    if have is not None and have != n:
        raise ValueError(f"per-frame conditions cover {have} frames, sampling {n}")
    if noise is not None and noise.shape[1] != n:
        raise ValueError(f"noise covers {noise.shape[1]} frames, sampling {n}")
    if latent_shape is None:
        if noise is not None:
            latent_shape = tuple(noise.shape[2:])
        elif cond.reference is not None:
            latent_shape = tuple(cond.reference.shape[1:])
        else:
            raise ValueError("cannot tell the latent shape: pass latent_shape, a reference latent or noise")
    leaves = [noise, cond.reference, *cond.frame.values(), *cond.video.values()]
    batch = next(v for v in leaves if v is not None).shape[0]

    p = plan(n, config)
    pad = lambda v: jnp.pad(jnp.asarray(v, jnp.float32), [(0, 0), (0, p.padded - v.shape[1])] + [(0, 0)] * 3)
    if noise is not None:
        noise = pad(noise)
    known_frames = 0
    if known is not None:
        known_frames = int(known.shape[1])
        if not 0 < known_frames < n:
            raise ValueError(f"known latents cover {known_frames} frames; inpainting needs 0 < known < {n} frames")
        known = pad(known)
    if (start is None) != (config.sigma_start == 0):
        raise ValueError("sampling from given latents needs both `start` and config.sigma_start > 0 "
                         f"(got sigma_start {config.sigma_start}, start {'given' if start is not None else 'None'})")
    if start is not None:
        start = jnp.broadcast_to(jnp.asarray(start, jnp.float32), (batch, n) + tuple(latent_shape))
        start = pad(start)
    sig = config.sigmas() if sigmas is None else jnp.asarray(sigmas, jnp.float32)
    ramp_v = config.ramp if config.ramp_over == "video" else None
    ramp_w = config.ramp if config.ramp_over == "window" else None
    profile_video = np.pad(ramp_profile(ramp_v, n), (0, p.padded - n), constant_values=1.0)
    static = _Static(p.window, config.overlap, p.max_windows, p.chunk, mode, config.eta > 0, return_trajectory,
                     (batch, p.padded) + tuple(latent_shape), config.kind, config.sigma_min, known_frames)
    model = backbone if isinstance(backbone, nnx.Module) else _FunctionBackbone(backbone)
    graphdef, params = nnx.split(model)
    state = SamplerState(
        noise, tuple(_pad_frames(c, p.padded) for c in conds), jnp.asarray(n, jnp.int32), sig,
        jnp.asarray([config.lip_scale, config.expr_scale], jnp.float32), jnp.asarray(profile_video),
        jnp.asarray(ramp_profile(ramp_w, p.window)), jnp.asarray(config.eta, jnp.float32), key,
        jnp.asarray(first_step, jnp.int32), known, start,
    )
    return n, (static, graphdef, params, state)


def sample(
    backbone: Backbone,
    conditions: Conditions | Branches,
    key: jax.Array,
    config: SamplerConfig = SamplerConfig(),
    *,
    num_frames: int | None = None,
    latent_shape: tuple[int, int, int] | None = None,
    noise: jax.Array | None = None,
    sigmas: jax.Array | None = None,
    return_trajectory: bool = False,
    first_step: int = 0,
    callback: Callable[[int], None] | None = None,
    known: jax.Array | None = None,
    start: jax.Array | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Sample video latents (B, N, H, W, C) for `conditions`.

    backbone: `backbone(sample (B', T, H, W, C + Cr), c_noise (B',), **frame, **video)` -> raw
      v-prediction (B', T, H, W, C); an NNX module or any function.
    conditions: `Conditions`, or `Branches` for guidance (see `guidance`).
    num_frames: N; by default the frame axis of the per-frame conditions.
    latent_shape: (H, W, C); by default the reference latent's (H, W) and C = Cr (SVD: 4).
    noise: standard-normal starting noise (B, N, H, W, C); by default drawn from `key` per frame
      (frame f from fold_in(key', f), so the same seed gives the same noise in any bucket).
    sigmas: (S + 1,) decreasing, ending in 0; by default `config.sigmas()`.
    return_trajectory: also return the latent after every step, (S, B, N, H, W, C).
    first_step: the index of `sigmas[0]` in the whole schedule, when a caller runs the schedule
      a few steps at a time (the per-step noise of eta > 0 then matches the one-program run).
    callback: called on the host with the step index (first_step + i) after each step, while
      the one program runs (progress bars); the program is the same with or without it.
    known: clean latents (B, K, H, W, C), 0 < K < N: the first K frames are held at them
      (re-noised to each step's sigma; exactly them at the end).
    start: clean latents (B, N or 1, H, W, C) to start from, noised to the first sigma (with
      config.sigma_start > 0 only).
    """
    n, args = _prepare(backbone, conditions, key, config, num_frames, latent_shape, noise, sigmas,
                       return_trajectory, first_step, known, start)
    program = _program(*args)
    _CALLBACK[0] = callback
    try:
        out, traj = jax.block_until_ready(program(*args[2:]))
    finally:
        _CALLBACK[0] = None
    out = out[:, :n]
    return (out, traj[:, :, :n]) if return_trajectory else out


def lower(backbone: Backbone, conditions: Conditions | Branches, key: jax.Array,
          config: SamplerConfig = SamplerConfig(), **kwargs) -> jax.stages.Lowered:
    """The lowered (not yet compiled) sampling program for these inputs: ahead-of-time compilation,
    cost and memory analysis (`lower(...).compile().memory_analysis()`). Keywords as `sample`."""
    names = ("num_frames", "latent_shape", "noise", "sigmas", "return_trajectory", "first_step")
    if set(kwargs) - set(names):
        raise TypeError(f"unexpected keywords {sorted(set(kwargs) - set(names))}")
    _, args = _prepare(backbone, conditions, key, config, *(kwargs.get(k) for k in names[:4]),
                       bool(kwargs.get("return_trajectory", False)), int(kwargs.get("first_step", 0)))
    return _lower(*args)
