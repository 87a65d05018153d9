"""Landmark-aligned faces from the data side: poses (`data.pose`) undone, and the canonical face.

The geometry (the similarity fit, the bilinear warp, `align_faces` to the canonical face) lives
with the encoders that use it, `models.face_align`, and is re-exported here. This module adds
`undo_pose`: frames at known `data.pose` poses relative to a reference brought back to it (the
same warp from a pose instead of a landmark fit), and `synthetic_canonical`, where
`models.face_align.CANONICAL` comes from: the synthetic domain's mean face, neutral and still
(its face half-width 0.28 of the image).

Shapes: frames (F, S, S, C); pose (F, 4); reference (68, 2); matrices (F, 2, 3).
"""

from __future__ import annotations

import jax
import numpy as np

from emotivetalk_jax.data.pose import PIVOT
from emotivetalk_jax.models.face_align import (
    CANONICAL,
    RIGID,
    align_faces,
    canonical_landmarks,
    similarity_matrices,
    warp,
)


def synthetic_canonical() -> np.ndarray:
    """The synthetic domain's mean face's landmarks (68, 2) as fractions of the image side."""
    from emotivetalk_jax.data import synthetic_face as sf

    mean_face = sf.Identity.sample(np.random.default_rng(0), variation=0.0)  # geometry at the middle of every range
    return (sf.landmarks(mean_face, sf.neutral_state(1)[0], 1000) / 1000.0).astype(np.float32)


def pose_matrices(pose: np.ndarray, pivot: np.ndarray, size: float) -> np.ndarray:
    """`data.pose` poses (F, 4) of frames relative to a reference whose pivot is `pivot` (2,)
    (the mean of its `pose.PIVOT` points) -> the matrices (F, 2, 3) of `pose.apply_pose`."""
    p = np.asarray(pose, np.float64).reshape(-1, 4)
    r = np.radians(p[:, 0])
    c, s = p[:, 3] * np.cos(r), p[:, 3] * np.sin(r)
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
    piv = np.asarray(pivot, np.float64)
    t = piv + p[:, 1:3] * size - rot @ piv
    return np.concatenate([rot, t[..., None]], -1).astype(np.float32)


def undo_pose(frames: jax.Array, pose: np.ndarray, reference: np.ndarray) -> jax.Array:
    """Frames (F, S, S, C) at `data.pose` poses (F, 4) relative to `reference` (68, 2) -> the frames
    with the pose undone (the face where the reference's is); pose `pose.STILL` returns them exactly."""
    pivot = np.asarray(reference, np.float64)[PIVOT].mean(0)
    return warp(frames, pose_matrices(pose, pivot, frames.shape[-2]))


__all__ = ["CANONICAL", "RIGID", "align_faces", "canonical_landmarks", "pose_matrices", "similarity_matrices",
           "synthetic_canonical", "undo_pose", "warp"]
