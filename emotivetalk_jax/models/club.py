"""CLUB's variational network q(e | l) = N(mu(l), diag exp(logvar(l))) (Cheng et al. 2020; 3.2).

Shape legend: N pairs (any leading axes), Dl lip latent width, De expression latent width,
H hidden width. The estimator and q's own loss are `losses.club_upper_bound` and
`losses.club_q_loss`. Training alternates: q takes a step on its negative log-likelihood
of the current (l_a, e_a) with both stopped; the V-AID step minimises the upper bound
with q frozen. As in the reference code, logvar ends in a tanh (that caps the
conditional variance to [e^-1, e]) unless `logvar_bound` is changed: logvar =
bound * tanh(raw / bound), so 1.0 (the default) is the reference. The bound keeps the
upper bound's gradients tame: with a free variance q can collapse and the main model then
drives the estimate far below zero (seen in a tiny run with bound 10).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from emotivetalk_jax.models.layers import linear
from emotivetalk_jax.models.vaid_variants import CLUBConfig

class MLP(nnx.Module):
    """Linear -> ReLU -> Linear."""

    def __init__(self, din: int, hidden: int, dout: int, *, rngs: nnx.Rngs):
        self.fc1 = linear(din, hidden, rngs=rngs)
        self.fc2 = linear(hidden, dout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.relu(self.fc1(x)))


class CLUB(nnx.Module):
    """l (..., Dl) -> (mu, logvar), each (..., De)."""

    def __init__(self, cfg: CLUBConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.p_mu = MLP(cfg.lip_dim, cfg.hidden, cfg.expr_dim, rngs=rngs)
        self.p_logvar = MLP(cfg.lip_dim, cfg.hidden, cfg.expr_dim, rngs=rngs)

    @classmethod
    def from_config(cls, cfg: CLUBConfig, *, rngs: nnx.Rngs) -> "CLUB":
        return cls(cfg, rngs=rngs)

    def __call__(self, l: jax.Array) -> tuple[jax.Array, jax.Array]:
        bound = self.cfg.logvar_bound
        logvar = bound * jnp.tanh(self.p_logvar(l) / bound)
        return self.p_mu(l), logvar
