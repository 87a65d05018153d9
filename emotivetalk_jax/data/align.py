"""Landmark-aligned face crops: each frame's similarity pose (roll, shift, scale) undone by a warp.

PD-FGC's encoders read aligned faces; ours read them when `FaceEncoderConfig.aligned` is on
(issue 30), so that l_v and e_v carry the mouth and the expression, not where the head is.
A frame is aligned to a reference face (68 landmarks): the similarity that carries the
reference's rigid points (`pose.RIGID`: jaw line, nose, eye corners, which expression does not
move) onto the frame's is fitted (Umeyama, as `pose.similarity_fit`), and the frame is sampled
through it (bilinear, edges repeated), so the face lands where the reference's is. The
encoders' reference is `canonical_landmarks`: the synthetic domain's mean face in its neutral,
still pose, so that every face, whatever its identity's size and place, is brought to one.

Pixel convention (as `synthetic_face` and dlib): (x, y) with pixel i's centre at i + 0.5.
An identity transform samples every pixel at its own centre, so it returns the frames exactly
(samples within `_SNAP` of a pixel centre, the fit's float error, are taken at it).

Shapes: frames (F, H, W, C); landmarks (F, 68, 2); reference (68, 2); matrices (F, 2, 3), a
matrix A mapping an output point q to the frame point A @ (q, 1).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from emotivetalk_jax.data.pose import PIVOT, RIGID


@functools.lru_cache(maxsize=1)
def _canonical_unit() -> np.ndarray:
    from emotivetalk_jax.data import synthetic_face as sf

    mean_face = sf.Identity.sample(np.random.default_rng(0), variation=0.0)  # geometry at the middle of every range
    return (sf.landmarks(mean_face, sf.neutral_state(1)[0], 1000) / 1000.0).astype(np.float32)


def canonical_landmarks(size: int) -> np.ndarray:
    """The 68 landmarks (68, 2) of the canonical face in a `size`-pixel square: the synthetic
    domain's mean geometry, neutral and still (its face half-width 0.28 of the image)."""
    return _canonical_unit() * np.float32(size)


def similarity_matrices(landmarks: jax.Array, reference: jax.Array, points=RIGID) -> jax.Array:
    """Per frame the least-squares similarity (2, 3) carrying `reference`'s `points` onto the
    frame's: landmarks (F, 68, 2), reference (68, 2) -> (F, 2, 3). Exactly the identity where a
    frame's points equal the reference's."""
    src = jnp.asarray(reference, jnp.float32)[points]
    dst = jnp.asarray(landmarks, jnp.float32)[:, points]
    ms, md = src.mean(0), dst.mean(1)
    a, b = src - ms, dst - md[:, None]
    dot = jnp.einsum("nk,fnk->f", a, b)
    cross = (a[None, :, 0] * b[..., 1] - a[None, :, 1] * b[..., 0]).sum(-1)
    theta = jnp.arctan2(cross, dot)
    scale = jnp.hypot(dot, cross) / jnp.maximum((a * a).sum(), 1e-12)
    c, s = scale * jnp.cos(theta), scale * jnp.sin(theta)
    rot = jnp.stack([jnp.stack([c, -s], -1), jnp.stack([s, c], -1)], -2)  # (F, 2, 2)
    t = md - jnp.einsum("fij,j->fi", rot, ms)
    return jnp.concatenate([rot, t[..., None]], -1)


def pose_matrices(pose: np.ndarray, pivot: np.ndarray, size: float) -> np.ndarray:
    """`data.pose` poses (F, 4) of frames relative to a reference whose pivot is `pivot` (2,)
    (`pose.PIVOT` points' mean) -> the matrices (F, 2, 3) of `pose.apply_pose`."""
    p = np.asarray(pose, np.float64).reshape(-1, 4)
    r = np.radians(p[:, 0])
    c, s = p[:, 3] * np.cos(r), p[:, 3] * np.sin(r)
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
    piv = np.asarray(pivot, np.float64)
    t = piv + p[:, 1:3] * size - rot @ piv
    return np.concatenate([rot, t[..., None]], -1).astype(np.float32)


_SNAP = 1e-3  # px: a sample this near a pixel centre takes it exactly (float error of the fit)


def warp(frames: jax.Array, matrices: jax.Array) -> jax.Array:
    """Each frame (F, H, W, C) sampled bilinearly at its matrix's image of every output pixel
    centre (edges repeated): out[f, y, x] = frame f at A_f @ (x + 0.5, y + 0.5, 1). Float out."""
    x = jnp.asarray(frames, jnp.float32)
    h, w = x.shape[1:3]
    gy, gx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) + 0.5, jnp.arange(w, dtype=jnp.float32) + 0.5,
                          indexing="ij")
    q = jnp.stack([gx, gy, jnp.ones_like(gx)], -1)  # (H, W, 3)

    def one(img, m):
        p = jnp.einsum("ij,hwj->hwi", m, q) - 0.5  # back to array indices
        p = jnp.where(jnp.abs(p - jnp.round(p)) < _SNAP, jnp.round(p), p)
        coords = [p[..., 1], p[..., 0]]
        return jnp.stack([jax.scipy.ndimage.map_coordinates(img[..., k], coords, order=1, mode="nearest")
                          for k in range(img.shape[-1])], -1)

    return jax.vmap(one)(x, jnp.asarray(matrices, jnp.float32))


def align_faces(frames: jax.Array, landmarks: jax.Array, reference: jax.Array | None = None) -> jax.Array:
    """Frames (F, H, W, C) with their landmarks (F, 68, 2) -> the frames warped so that each
    face's rigid points sit on `reference`'s (68, 2; default `canonical_landmarks(W)`). Jittable."""
    ref = canonical_landmarks(frames.shape[-2]) if reference is None else reference
    return warp(frames, similarity_matrices(landmarks, ref))


def undo_pose(frames: jax.Array, pose: np.ndarray, reference: np.ndarray) -> jax.Array:
    """Frames (F, S, S, C) at `data.pose` poses (F, 4) relative to `reference` (68, 2) -> the frames
    with the pose undone (the face where the reference's is); pose `pose.STILL` returns them exactly."""
    pivot = np.asarray(reference, np.float64)[PIVOT].mean(0)
    return warp(frames, pose_matrices(pose, pivot, frames.shape[-2]))


__all__ = ["canonical_landmarks", "similarity_matrices", "pose_matrices", "warp", "align_faces", "undo_pose"]
