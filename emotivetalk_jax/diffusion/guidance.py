"""Conditions of the video denoiser and classifier-free guidance with two scales.

Shape legend: B batch, N frames, T window frames, H, W latent size, Cr reference channels.

`Conditions` splits the backbone's inputs by how the sampler treats them:
  reference (B, H, W, Cr)  concatenated on channels with every (c_in-scaled) frame;
  frame     {name: (B, N, ...)}  per-frame, sliced per window (lip tokens, e_dri, ...);
  video     {name: (B, ...)}     per-video, passed whole (added_time_ids, e_ref, masks, ...).
The backbone is called `backbone(sample, c_noise, **frame_slice, **video)`.

Guidance (the paper is silent; our decision). Three branches: `cond` (lip + expression),
`no_expr` (expression dropped), `null` (both dropped), combined on x0 (equivalently on
the raw output, since all branches share sigma and the scales sum to one) as

    D = D_null + s_lip (D_no_expr - D_null) + s_expr (D_cond - D_no_expr),

the nested form of multi-condition CFG (InstructPix2Pix): s_lip = s_expr = 1 gives D_cond,
s_lip = s_expr = s collapses to the two-branch D_null + s (D_cond - D_null), and s_lip = 1
to the two-branch D_no_expr + s_expr (D_cond - D_no_expr) ("expression" mode: D_null cancels,
so it is not computed). Each scale may
vary per frame: s_f = 1 + r_f (s - 1) with a linear ramp profile r (SVD's 1 -> 3 frame
ramp is s = 3 with r from 0 to 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("none", "joint", "expression", "dual")


class Conditions(NamedTuple):
    """Everything the backbone sees besides the noisy latent and the noise level."""

    reference: jax.Array | None = None  # (B, H, W, Cr), or None for no channel concatenation
    frame: Mapping[str, jax.Array] = {}  # per-frame leaves (B, N, ...)
    video: Mapping[str, jax.Array] = {}  # per-video leaves (B, ...)


class Branches(NamedTuple):
    """Guidance inputs: the full conditions and their dropped variants (same structure and shapes)."""

    cond: Conditions
    no_expr: Conditions | None = None  # expression condition dropped, lip kept ("dual" mode)
    null: Conditions | None = None  # lip and expression dropped ("joint" and "dual")


def drop(cond: Conditions, *names: str, reference: bool = False, value: float = 0.0) -> Conditions:
    """`cond` with the named frame/video leaves (and optionally the reference latent) set to `value`.

    SVD's unconditional branch is `drop(cond, "encoder_hidden_states", reference=True)`.
    """
    unknown = set(names) - set(cond.frame) - set(cond.video)
    if unknown:
        raise KeyError(f"no condition named {sorted(unknown)}; have {sorted({**cond.frame, **cond.video})}")
    fill = lambda d: {k: (jnp.full_like(v, value) if k in names else v) for k, v in d.items()}
    ref = cond.reference
    if reference and ref is not None:
        ref = jnp.full_like(ref, value)
    return Conditions(ref, fill(cond.frame), fill(cond.video))


def guidance_mode(lip_scale: float, expr_scale: float, mode: str = "auto") -> str:
    """Which branches to run: "none" (cond only), "joint" (cond, null), "expression" (cond,
    no_expr; lip_scale 1) or "dual" (cond, no_expr, null)."""
    if mode == "auto":
        if lip_scale == 1.0 and expr_scale == 1.0:
            return "none"
        if lip_scale == 1.0:
            return "expression"
        return "joint" if lip_scale == expr_scale else "dual"
    if mode not in MODES:
        raise ValueError(f"guidance mode {mode!r}; choose auto or one of {MODES}")
    if mode == "joint" and lip_scale != expr_scale:
        raise ValueError(f"joint guidance needs lip_scale == expr_scale, got {lip_scale} and {expr_scale}")
    if mode == "expression" and lip_scale != 1.0:
        raise ValueError(f"expression guidance needs lip_scale == 1, got {lip_scale}; use dual")
    return mode


def branch_list(branches: Branches, mode: str) -> tuple[Conditions, ...]:
    """The conditions to batch for `mode`, in the order `combine` expects."""
    need = {"none": ("cond",), "joint": ("cond", "null"), "expression": ("cond", "no_expr"),
            "dual": ("cond", "no_expr", "null")}[mode]
    missing = [n for n in need if getattr(branches, n) is None]
    if missing:
        raise ValueError(f"guidance mode {mode!r} needs the {missing} branch(es) of Branches")
    out = tuple(getattr(branches, n) for n in need)
    structure = jax.tree.structure(out[0])
    for n, c in zip(need[1:], out[1:]):
        if jax.tree.structure(c) != structure:
            raise ValueError(f"branch {n!r} has a different structure from 'cond'")
    return out


def combine(preds: jax.Array, mode: str, lip_scale: jax.Array, expr_scale: jax.Array) -> jax.Array:
    """Guided prediction from branch predictions `preds` (R, ...) stacked in `branch_list` order.

    Scales broadcast against one branch's prediction (per frame: shape (..., T, 1, 1, 1)).
    """
    if mode == "none":
        return preds[0]
    if mode == "joint":
        cond, null = preds
        return null + lip_scale * (cond - null)
    if mode == "expression":
        cond, no_expr = preds
        return no_expr + expr_scale * (cond - no_expr)
    cond, no_expr, null = preds
    return null + lip_scale * (no_expr - null) + expr_scale * (cond - no_expr)


def ramp_profile(ramp: tuple[float, float] | None, n: int) -> np.ndarray:
    """Per-frame ramp r (n,): linear from ramp[0] to ramp[1], or ones without a ramp."""
    if ramp is None:
        return np.ones((n,), np.float32)
    return np.linspace(ramp[0], ramp[1], n, dtype=np.float32) if n > 1 else np.full((n,), ramp[1], np.float32)


def frame_scale(scale: jax.Array, profile: jax.Array) -> jax.Array:
    """s_f = 1 + r_f (s - 1): the scale itself where r = 1, no guidance where r = 0."""
    return 1.0 + profile * (scale - 1.0)
