"""Head-pose scores of generated clips (issue 30), per pose component (`data.pose.POSE_KEYS`).

* pose_corr: Pearson r between the driving pose and the pose read back from the generated
  frames, per frame, pooled over clips after removing each clip's mean from both (the pose of a
  driving video is relative to its first frame, the read-back is absolute: only the motion is
  compared). None for a component the driving poses do not move.
* pose_std_ratio: the generated pose's standard deviation over the domain's (each the mean
  over clips of the per-clip std; the domain's: the ground truth of the same clips). 1: heads
  that move as much as the data's; 0: still heads. None for a component the domain does not move.

Unreadable frames (nan rows of `data.measure.read_pose`) are left out. Scored on the ground
truth itself (the real frames read back as if generated, their own pose as the driving one),
both are ~1 (tests/test_pose.py, benchmarks/README.md).
"""

from __future__ import annotations

import numpy as np

from emotivetalk_jax.data.pose import POSE_KEYS

MIN_STD = 1e-6


def _centred(seqs: list[np.ndarray]) -> list[np.ndarray]:
    return [s - np.nanmean(s, 0, keepdims=True) if np.isfinite(s).any() else s for s in seqs]


def pose_corr(generated: list[np.ndarray], driving: list[np.ndarray]) -> dict[str, float | None]:
    """{component: pooled r} of per-clip-centred (F, 4) sequences (see the module docstring)."""
    g = np.concatenate(_centred([np.asarray(x, np.float64) for x in generated]))
    d = np.concatenate(_centred([np.asarray(x, np.float64) for x in driving]))
    if g.shape != d.shape:
        raise ValueError(f"generated and driving poses differ in length: {g.shape} vs {d.shape}")
    out = {}
    for k, name in enumerate(POSE_KEYS):
        ok = np.isfinite(g[:, k]) & np.isfinite(d[:, k])
        x, y = g[ok, k], d[ok, k]
        out[name] = (float(np.corrcoef(x, y)[0, 1]) if len(x) >= 3 and x.std() > MIN_STD and y.std() > MIN_STD
                     else None)
    return out


def mean_std(seqs: list[np.ndarray]) -> np.ndarray:
    """(4,) mean over clips of each component's per-clip std (nan rows left out)."""
    return np.nanmean(np.stack([np.nanstd(np.asarray(s, np.float64), 0) for s in seqs]), 0)


def pose_std_ratio(generated: list[np.ndarray], domain: list[np.ndarray]) -> dict[str, float | None]:
    g, d = mean_std(generated), mean_std(domain)
    return {name: (float(g[k] / d[k]) if np.isfinite(g[k]) and d[k] > MIN_STD else None)
            for k, name in enumerate(POSE_KEYS)}


def pose_scores(generated: list[np.ndarray], domain: list[np.ndarray],
                driving: list[np.ndarray] | None = None) -> dict:
    """pose_std_ratio, pose_std (generated, domain) and with `driving` pose_corr."""
    out = {"pose_std_ratio": pose_std_ratio(generated, domain),
           "pose_std": {"generated": dict(zip(POSE_KEYS, map(float, mean_std(generated)))),
                        "domain": dict(zip(POSE_KEYS, map(float, mean_std(domain))))}}
    if driving is not None:
        out["pose_corr"] = pose_corr(generated, driving)
    return out
