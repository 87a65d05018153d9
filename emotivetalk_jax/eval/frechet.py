"""Fréchet distance between Gaussian feature statistics, accumulated in a stream.

Shape legend: N samples, D feature width.

    d^2 = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})

FID (InceptionV3 pool features), FVD (I3D logits) and E-FID (3DMM expression
coefficients) are all this distance between the statistics of two feature sets.
`FeatureStats` accumulates count, mean and the centred sum of squares in float64 and
merges batches with Chan et al.'s pairwise update, so statistics streamed over any number
of videos equal one-pass statistics (to rounding) without holding the features.
The trace of the matrix square root is computed from eigenvalues of the symmetric
positive semi-definite S_1^{1/2} S_2 S_1^{1/2}, which has the same spectrum as S_1 S_2
but no complex round-off (the TF-GAN formulation that FVD's reference code uses).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class FeatureStats:
    """Running count, mean (D,) and centred sum of squares (D, D) of feature rows, float64."""

    dim: int
    count: int = 0
    mean: np.ndarray = None
    m2: np.ndarray = None

    def __post_init__(self):
        if self.mean is None:
            self.mean = np.zeros(self.dim, np.float64)
        if self.m2 is None:
            self.m2 = np.zeros((self.dim, self.dim), np.float64)

    def update(self, features: np.ndarray) -> "FeatureStats":
        """Add rows (N, D); returns self."""
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must be (N, {self.dim}); got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or infinity; the network or its input is broken")
        n = x.shape[0]
        if n == 0:
            return self
        batch_mean = x.mean(0)
        centred = x - batch_mean
        batch_m2 = centred.T @ centred
        total = self.count + n
        delta = batch_mean - self.mean
        self.m2 = self.m2 + batch_m2 + np.outer(delta, delta) * (self.count * n / total)
        self.mean = self.mean + delta * (n / total)
        self.count = total
        return self

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Statistics of both sets (a new object)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of width {self.dim} and {other.dim}")
        out = FeatureStats(self.dim, self.count, self.mean.copy(), self.m2.copy())
        if other.count == 0:
            return out
        total = self.count + other.count
        delta = other.mean - self.mean
        out.m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.count * other.count / total)
        out.mean = self.mean + delta * (other.count / total)
        out.count = total
        return out

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (D, D), as numpy.cov / pytorch-fid compute it."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 feature rows; got {self.count}")
        return self.m2 / (self.count - 1)


def feature_stats(features: np.ndarray) -> FeatureStats:
    """One-pass statistics of (N, D) features."""
    x = np.asarray(features)
    return FeatureStats(x.shape[-1]).update(x)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues clipped)."""
    w, v = np.linalg.eigh(0.5 * (matrix + matrix.T))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S_1 S_2)^{1/2}) for symmetric PSD S_1, S_2."""
    root = _psd_sqrt(sigma1)
    inner = root @ sigma2 @ root
    w = np.linalg.eigvalsh(0.5 * (inner + inner.T))
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (float64)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"statistics do not match: means {mu1.shape} / {mu2.shape}, covariances {s1.shape} / {s2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2)
    return float(max(value, 0.0))


def stats_distance(a: FeatureStats, b: FeatureStats) -> float:
    """Fréchet distance between two accumulated feature sets."""
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)
