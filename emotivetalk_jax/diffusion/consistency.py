"""Consistency distillation of ETHD on SVD's EDM schedule (latent-consistency style, multistep).

Shape legend: B batch, F frames, H, W latent size, C latent channels (4), N grid points.

The student is an ETHD whose denoiser D_theta(x; sigma) (`edm.denoise`, SVD's v-prediction
preconditioning) is wrapped so that the boundary condition holds exactly:

    f(x, s) = c_skip(s) x + c_out(s) D(x; s),
    c_skip = sd^2 / (((s - s_min) k)^2 + sd^2),   c_out = (s - s_min) k / sqrt(((s - s_min) k)^2 + sd^2),

so f(x, s_min) = x (LCM's form with its sigma_data sd = 0.5 and timestep scaling k = 10, written
in sigma units: above s ~ 0.5, f is D itself).

Distillation (LCM, AnimateLCM-SVD): the grid is N Karras sigmas from s_max down to s_min. A
clip's x0 is noised to x_hi = x0 + s_hi n at a grid point s_hi = grid[i]; the frozen teacher,
with its guidance folded in (its branches batched, combined at the bundle's scales), makes one
DDIM step to s_lo = grid[i + 1]; the loss pulls f_student(x_hi, s_hi) to the target
f_target(x_lo, s_lo), the target being an EMA of the student (stop-gradient). The student
thus runs once per sampling step: one branch, no guidance.

Sampling (`sampler.sample` with `SamplerConfig(kind="consistency")`): x0 = f(x, s) fused over
windows, then re-noised to the next sigma, x = x0 + s_next z; one step maps pure noise to x0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from emotivetalk_jax.diffusion.edm import RHO, SIGMA_MAX, SIGMA_MIN

SIGMA_DATA, TIME_SCALE = 0.5, 10.0
GRID = 32  # Karras grid points of the distillation schedule (the teacher's DDIM step spans one gap)
SIGMA_HI, SIGMA_LO = 2.0, 0.2  # the few-step schedule's second and last sigma (see `student_sigmas`)


def boundary(sigma: jax.Array, sigma_min: float = SIGMA_MIN) -> tuple[jax.Array, jax.Array]:
    """(c_skip, c_out) of the consistency parameterisation at `sigma` (any shape)."""
    t = (jnp.asarray(sigma, jnp.float32) - sigma_min) * TIME_SCALE
    c_skip = SIGMA_DATA**2 / (t**2 + SIGMA_DATA**2)
    c_out = t / jnp.sqrt(t**2 + SIGMA_DATA**2)
    return c_skip, c_out


def consistency_fn(x: jax.Array, denoised: jax.Array, sigma: jax.Array, sigma_min: float = SIGMA_MIN) -> jax.Array:
    """f(x, sigma) from the denoiser's x0 estimate D(x; sigma): x (B, ...) and sigma () or (B,)."""
    c_skip, c_out = boundary(sigma, sigma_min)
    expand = lambda c: jnp.reshape(c, jnp.shape(c) + (1,) * (x.ndim - jnp.ndim(c))).astype(x.dtype)
    return expand(c_skip) * x + expand(c_out) * denoised.astype(x.dtype)


def distillation_grid(n: int = GRID, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                      rho: float = RHO) -> np.ndarray:
    """(n,) Karras sigmas from sigma_max down to sigma_min (no final 0): the distillation schedule."""
    if n < 2:
        raise ValueError(f"the distillation grid needs at least 2 points, got {n}")
    ramp = np.linspace(0.0, 1.0, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return ((hi + ramp * (lo - hi)) ** rho).astype(np.float32)


def student_sigmas(steps: int, grid: int = GRID, sigma_hi: float = SIGMA_HI, sigma_lo: float = SIGMA_LO,
                   sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                   sigma_start: float = 0.0) -> np.ndarray:
    """(steps + 1,) the few-step schedule, ending in 0: the first sigma (sigma_max, or with
    sigma_start > 0 the grid point nearest it: sampling then starts from the reference frame
    noised to it), then steps - 1 sigmas spaced evenly in log from sigma_hi down to sigma_lo,
    each snapped to the nearest grid point (the sigmas the student was trained at). One step:
    [sigma_max, 0]; two: [sigma_max, ~2, 0]."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not sigma_max > sigma_hi >= sigma_lo > sigma_min:
        raise ValueError(f"need sigma_max > sigma_hi >= sigma_lo > sigma_min, got {sigma_max}, {sigma_hi}, "
                         f"{sigma_lo}, {sigma_min}")
    g = distillation_grid(grid, sigma_min, sigma_max)
    snap = lambda s: g[np.argmin(np.abs(np.log(g) - np.log(s)))]
    first = g[0] if sigma_start <= 0 else snap(sigma_start)
    mids = np.geomspace(sigma_hi, sigma_lo, steps - 1) if steps > 1 else np.zeros((0,))
    snapped = [snap(s) for s in mids]
    if any(s >= first for s in snapped):
        raise ValueError(f"sigma_start {sigma_start} must lie above sigma_hi {sigma_hi} (the next step's sigma)")
    return np.asarray([first, *snapped, 0.0], np.float32)


def pseudo_huber(a: jax.Array, b: jax.Array, c: float, weight: jax.Array | None = None) -> jax.Array:
    """Per clip mean of sqrt((a - b)^2 + c^2) - c over (F, H, W, C) (c = 0: the squared error) -> (B,);
    `weight` (B, H, W, 1) makes it a weighted mean (`ethd_loss.region_weight`)."""
    d = jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32))
    per = d if c == 0 else jnp.sqrt(d + c * c) - c
    axes = tuple(range(1, per.ndim))
    if weight is None:
        return jnp.mean(per, axis=axes)
    w = jnp.broadcast_to(weight[:, None].astype(jnp.float32), per.shape)
    return jnp.sum(per * w, axis=axes) / jnp.sum(w, axis=axes)


def guided_denoise(teacher, x: jax.Array, sigma: jax.Array, eb, e_dri: jax.Array, lip_scale: float,
                   expr_scale: float) -> jax.Array:
    """The teacher's guided x0 (B, F, H, W, C): its guidance branches (the pipeline's: no_expr =
    e_dri replaced by e_ref, null = lip tokens zeroed as well) batched into one call, combined at
    the given scales (`guidance.combine`). `eb`: an `ethd_loss.ETHDBatch`; sigma (B,)."""
    from emotivetalk_jax.diffusion.ethd_loss import ethd_denoise
    from emotivetalk_jax.diffusion.guidance import combine, guidance_mode

    mode = guidance_mode(lip_scale, expr_scale)
    e_ref = jnp.broadcast_to(eb.e_ref[:, None], e_dri.shape)
    zero_lip = jnp.zeros_like(eb.lip_tokens)
    inputs = {"cond": (eb.lip_tokens, e_dri), "no_expr": (eb.lip_tokens, e_ref), "null": (zero_lip, e_ref)}
    order = {"none": ("cond",), "joint": ("cond", "null"), "expression": ("cond", "no_expr"),
             "dual": ("cond", "no_expr", "null")}[mode]
    r = len(order)
    rep = lambda v: None if v is None else jnp.concatenate([v] * r)
    lips = jnp.concatenate([inputs[o][0] for o in order])
    exprs = jnp.concatenate([inputs[o][1] for o in order])
    d = ethd_denoise(teacher, rep(x), rep(sigma), rep(eb.ref_latent), lips, rep(eb.added_time_ids), exprs,
                     rep(eb.e_ref), rep(eb.lip_mask), rep(eb.face_mask))
    preds = d.reshape((r,) + x.shape)
    return combine(preds, mode, float(lip_scale), float(expr_scale)).astype(x.dtype)  # weak scalars: x's dtype


def distillation_loss(student, target, teacher, eb, key: jax.Array, *, grid: np.ndarray, lip_scale: float = 1.0,
                      expr_scale: float = 1.0, p_video: float = 0.6, huber_c: float = 0.0,
                      weight: jax.Array | None = None, anchor: float = 0.0) -> tuple[jax.Array, dict]:
    """One consistency-distillation loss on an `ETHDBatch` (see the module docstring).

    student / target / teacher: ETHD-signature callables (the target is the student's EMA; its
    output is stop-gradient). e_dri = e_v with probability p_video else e_a, as in stage 2 (no
    condition dropout: guidance is folded in). `anchor` > 0 adds that weight times the squared
    error of the student's denoiser D_student(x_hi; s_hi) against the teacher's guided one at the
    same point (guidance distillation, Meng et al. 2023: it holds the student's one-step
    prediction at the teacher's while the consistency term makes its steps agree). Returns (loss,
    aux) with aux = sigma (B,) the s_hi drawn, `student_x0` (B, F, H, W, C) f_student(x_hi, s_hi),
    and the two terms `consistency` and `anchor` ().
    """
    from emotivetalk_jax.diffusion.ethd_loss import choose_e_dri, ethd_denoise

    eb = jax.tree.map(jax.lax.stop_gradient, eb)
    k_i, k_n, k_e = jax.random.split(key, 3)
    x0 = eb.latents
    b = x0.shape[0]
    g = jnp.asarray(grid, jnp.float32)
    i = jax.random.randint(k_i, (b,), 0, g.shape[0] - 1)
    s_hi, s_lo = g[i], g[i + 1]
    col = lambda s: s.reshape((-1,) + (1,) * (x0.ndim - 1)).astype(x0.dtype)
    x_hi = x0 + col(s_hi) * jax.random.normal(k_n, x0.shape, x0.dtype)
    e_dri = choose_e_dri(k_e, eb.e_v, eb.e_a, p_video)
    d_t = jax.lax.stop_gradient(guided_denoise(teacher, x_hi, s_hi, eb, e_dri, lip_scale, expr_scale))
    x_lo = (d_t + col(s_lo / s_hi) * (x_hi - d_t)).astype(x0.dtype)  # one DDIM step of the guided teacher
    args = (eb.ref_latent, eb.lip_tokens, eb.added_time_ids, e_dri, eb.e_ref, eb.lip_mask, eb.face_mask)
    d_s = ethd_denoise(student, x_hi, s_hi, *args)
    f_s = consistency_fn(x_hi, d_s, s_hi)
    f_t = jax.lax.stop_gradient(consistency_fn(x_lo, ethd_denoise(target, x_lo, s_lo, *args), s_lo))
    cd = jnp.mean(pseudo_huber(f_s, f_t, huber_c, weight))
    held = jnp.mean(pseudo_huber(d_s, d_t, 0.0, weight)) if anchor else jnp.zeros((), jnp.float32)
    return cd + anchor * held, dict(sigma=s_hi, student_x0=f_s, consistency=cd, anchor=held)
