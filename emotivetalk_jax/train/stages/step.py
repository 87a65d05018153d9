"""The train step of any stage: every update group in order, then the EMA; and the step-0 state.

A non-finite loss or gradient norm leaves parameters and optimiser state unchanged (as does a
non-finite update) and counts the step in `skipped` / `bad_streak`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from emotivetalk_jax import sharding as shd
from emotivetalk_jax.train.state import TrainState, cast_floating
from emotivetalk_jax.train.stages.common import EMA, Stage


def init_state(stage: Stage, txs: dict[str, optax.GradientTransformation], seed: int, *,
               ema_decay: float = 0.0) -> TrainState:
    """The step-0 state (host arrays; `loop` places it on the mesh). With `ema_decay` > 0,
    `params["ema"]` holds an exponential moving average of the first group's parameters
    (what `export-bundle` ships: `checkpoint.restore_model_arrays(..., ema=True)`)."""
    opt = {g: txs[g].init(stage.init_params[g]) for g in stage.groups}
    params = dict(stage.init_params)
    if ema_decay > 0:
        params[EMA] = jax.tree.map(lambda x: x, stage.init_params[stage.groups[0]])
    zero = jnp.zeros((), jnp.int32)
    return TrainState(params, stage.init_rest, opt, zero, zero, zero, jax.random.key_data(jax.random.key(seed)))


def abstract_state(stage: Stage, txs: dict[str, optax.GradientTransformation], seed: int, *,
                   ema_decay: float = 0.0) -> TrainState:
    return jax.eval_shape(lambda: init_state(stage, txs, seed, ema_decay=ema_decay))


def make_step(stage: Stage, txs: dict[str, optax.GradientTransformation], schedules: dict[str, optax.Schedule],
              *, compute_dtype=jnp.float32, mesh=None, mesh_rules=None, ema_decay: float = 0.0) -> Callable:
    """step(state, frozen_state, batch) -> (state, metrics): every update group in order, then
    the EMA of the first group (`ema_decay` > 0; a skipped step leaves it unchanged). A stage with
    `loss_reads_target` gets that EMA (before this step's update) as its loss's target model.

    Metrics (scalars): loss (the first group's), loss/<group>, every aux scalar, grad_norm/<group>,
    lr/<group>, finite, skipped, bad_streak. With a `mesh`, batch and inputs are constrained to
    `mesh_rules`' `batch` axes (the config's `sharding.mesh_rules`).
    """
    compute_dtype = jnp.dtype(compute_dtype)
    if mesh is not None and mesh_rules is None:
        raise ValueError("make_step(mesh=...) needs mesh_rules (the config's sharding.mesh_rules)")

    def step(state: TrainState, frozen_state: Any, batch: dict) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        k_prep, k_loss = jax.random.split(key)
        batch = shd.constrain_batch(batch, mesh, mesh_rules)
        frozen = nnx.merge(stage.frozen_graphdef, cast_floating(frozen_state, compute_dtype))
        inputs = jax.lax.stop_gradient(stage.prepare(frozen, batch, k_prep))
        inputs = shd.constrain_batch(cast_floating(inputs, compute_dtype), mesh, mesh_rules)
        params, opt = dict(state.params), dict(state.opt)
        metrics, aux, all_ok = {}, {}, jnp.bool_(True)
        for i, g in enumerate(stage.groups):
            def loss_fn(p, g=g):
                full = {**params, g: p}
                model = stage.model(cast_floating(full, compute_dtype), cast_floating(state.rest, compute_dtype))
                more = (frozen,) if stage.loss_reads_frozen or stage.loss_reads_target else ()
                if stage.loss_reads_target:
                    tp = jax.lax.stop_gradient(params.get(EMA, params[stage.groups[0]]))
                    more += (stage.model(cast_floating({**params, stage.groups[0]: tp}, compute_dtype),
                                         cast_floating(state.rest, compute_dtype)),)
                loss, a = stage.losses[g](model, inputs, jax.random.fold_in(k_loss, i), aux, *more)
                return loss.astype(jnp.float32), a

            (loss, a), grads = jax.value_and_grad(loss_fn, has_aux=True)(params[g])
            gnorm = optax.global_norm(grads)
            updates, new_opt = txs[g].update(grads, opt[g], params[g])
            ok = jnp.isfinite(loss) & jnp.isfinite(gnorm) & jnp.isfinite(optax.global_norm(updates))
            new_p = optax.apply_updates(params[g], updates)
            params[g] = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_p, params[g])
            opt[g] = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_opt, opt[g])
            aux = {k: jax.lax.stop_gradient(v) for k, v in a.items()}
            all_ok = all_ok & ok
            metrics[f"loss/{g}"] = loss
            metrics[f"grad_norm/{g}"] = gnorm
            metrics[f"lr/{g}"] = jnp.asarray(schedules[g](state.step), jnp.float32)
            metrics.update({f"{k}": v.astype(jnp.float32) for k, v in a.items() if jnp.ndim(v) == 0})
        if ema_decay > 0:
            params[EMA] = jax.tree.map(lambda e, p: jnp.where(all_ok, ema_decay * e + (1 - ema_decay) * p, e),
                                       params[EMA], params[stage.groups[0]])
        metrics["loss"] = metrics[f"loss/{stage.groups[0]}"]
        bad = jnp.where(all_ok, 0, state.bad_streak + 1)
        skipped = state.skipped + (~all_ok).astype(jnp.int32)
        metrics.update(finite=all_ok.astype(jnp.float32), skipped=skipped, bad_streak=bad)
        new = TrainState(params, state.rest, opt, state.step + 1, skipped, bad, state.rng)
        return new, metrics

    return step
