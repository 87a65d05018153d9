"""Landmark-aligned faces: each image's similarity pose (roll, shift, scale) undone by a warp.

PD-FGC's encoders read aligned faces; `FaceEncoders` reads them when `FaceEncoderConfig.aligned`
is on (issue 30), so that l_v and e_v carry the mouth and the expression, not where the head
is. An image is aligned to a reference face (68 landmarks): the similarity that carries the
reference's rigid points (`RIGID`: jaw line, nose, eye corners, which expression does not move)
onto the image's is fitted by least squares (Umeyama, as `data.pose.similarity_fit`), and the
image is sampled through it (bilinear, edges repeated), so the face lands where the reference's
is. The encoders' reference is `canonical_landmarks`: `CANONICAL`, the synthetic domain's mean
face, neutral and still (`data.align.synthetic_canonical` derives it; a test keeps the two
equal), so that every face, whatever its identity's size and place, is brought to one.

Pixel convention (as `data.synthetic_face` and dlib): (x, y) with pixel i's centre at i + 0.5.
An identity transform samples every pixel at its own centre, so it returns the images exactly
(samples within `_SNAP` of a pixel centre, the fit's float error, are taken at it).

Shapes: images (N, H, W, C); landmarks (N, 68, 2) pixel (x, y); reference (68, 2); matrices
(N, 2, 3), a matrix A mapping an output point q to the image point A @ (q, 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# The landmarks a face's pose is fitted on: the upper jaw line, the nose, the four eye corners.
RIGID = np.array([0, 1, 2, 3, 4, 12, 13, 14, 15, 16, *range(27, 36), 36, 39, 42, 45])
_SNAP = 1e-3  # px: a sample this near a pixel centre takes it exactly (float error of the fit)

# The canonical face's 68 landmarks as fractions of the image side (x, y), in dlib order.
CANONICAL = np.array([
    (0.23966259, 0.3470334), (0.22249207, 0.43191656), (0.22693473, 0.51963603), (0.25230917, 0.6050175),
    (0.2891569, 0.6830245), (0.3347325, 0.74905574), (0.38652897, 0.79921615), (0.44229886, 0.8305469),
    (0.5, 0.8412), (0.5577011, 0.8305469), (0.61347103, 0.79921615), (0.6652675, 0.74905574),
    (0.7108431, 0.6830245), (0.7476908, 0.6050175), (0.77306527, 0.51963603), (0.77750796, 0.43191656),
    (0.7603374, 0.3470334), (0.34039998, 0.319056), (0.3628, 0.319056), (0.38520002, 0.319056),
    (0.40760002, 0.319056), (0.43, 0.319056), (0.57, 0.319056), (0.5924, 0.319056),
    (0.6148, 0.319056), (0.6372, 0.319056), (0.65959996, 0.319056), (0.5, 0.436656),
    (0.5, 0.472776), (0.5, 0.508896), (0.5, 0.545016), (0.4608, 0.559016),
    (0.4804, 0.553416), (0.5, 0.550616), (0.5196, 0.553416), (0.5392, 0.559016),
    (0.33479998, 0.436656), (0.36, 0.41483214), (0.4104, 0.41483214), (0.4356, 0.436656),
    (0.4104, 0.45847982), (0.36, 0.45847982), (0.5644, 0.436656), (0.58959997, 0.41483214),
    (0.64, 0.41483214), (0.6652, 0.436656), (0.64, 0.45847982), (0.58959997, 0.45847982),
    (0.388, 0.667824), (0.42533335, 0.649041), (0.46266666, 0.6440652), (0.5, 0.642624),
    (0.5373333, 0.6440652), (0.5746667, 0.649041), (0.612, 0.667824), (0.5746667, 0.686607),
    (0.5373333, 0.69158274), (0.5, 0.693024), (0.46266666, 0.69158274), (0.42533335, 0.686607),
    (0.4048, 0.667824), (0.4524, 0.667824), (0.5, 0.667824), (0.5476, 0.667824),
    (0.5952, 0.667824), (0.5476, 0.667824), (0.5, 0.667824), (0.4524, 0.667824),
], np.float32)


def canonical_landmarks(size: int) -> np.ndarray:
    """The canonical face's 68 landmarks (68, 2) in a `size`-pixel square."""
    return CANONICAL * np.float32(size)


def similarity_matrices(landmarks: jax.Array, reference: jax.Array, points=RIGID) -> jax.Array:
    """Per image the least-squares similarity (2, 3) carrying `reference`'s `points` onto the
    image's: landmarks (N, 68, 2), reference (68, 2) -> (N, 2, 3)."""
    src = jnp.asarray(reference, jnp.float32)[points]
    dst = jnp.asarray(landmarks, jnp.float32)[:, points]
    ms, md = src.mean(0), dst.mean(1)
    a, b = src - ms, dst - md[:, None]
    dot = jnp.einsum("nk,fnk->f", a, b)
    cross = (a[None, :, 0] * b[..., 1] - a[None, :, 1] * b[..., 0]).sum(-1)
    theta = jnp.arctan2(cross, dot)
    scale = jnp.hypot(dot, cross) / jnp.maximum((a * a).sum(), 1e-12)
    c, s = scale * jnp.cos(theta), scale * jnp.sin(theta)
    rot = jnp.stack([jnp.stack([c, -s], -1), jnp.stack([s, c], -1)], -2)  # (N, 2, 2)
    t = md - jnp.einsum("fij,j->fi", rot, ms)
    return jnp.concatenate([rot, t[..., None]], -1)


def warp(images: jax.Array, matrices: jax.Array) -> jax.Array:
    """Each image (N, H, W, C) sampled bilinearly at its matrix's image of every output pixel
    centre (edges repeated): out[n, y, x] = image n at A_n @ (x + 0.5, y + 0.5, 1). Float32 out."""
    x = jnp.asarray(images, jnp.float32)
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


def align_faces(images: jax.Array, landmarks: jax.Array, reference: jax.Array | None = None) -> jax.Array:
    """Images (N, H, W, C) with their landmarks (N, 68, 2) -> the images warped so that each
    face's rigid points sit on `reference`'s (68, 2; default `canonical_landmarks(W)`). Jittable."""
    ref = canonical_landmarks(images.shape[-2]) if reference is None else reference
    return warp(images, similarity_matrices(landmarks, ref))


__all__ = ["CANONICAL", "RIGID", "align_faces", "canonical_landmarks", "similarity_matrices", "warp"]
