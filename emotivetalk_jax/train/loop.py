"""The training loop: `train(config, workdir)`.

One program from a 2-core CPU to a pod: `maybe_initialize_distributed` (multi-host, from
the environment the `launch/` scripts set), a mesh from `config.mesh`, parameters and
optimiser state sharded by `sharding`'s rules, a `jax.jit` step with explicit in/out
shardings and the train state donated, grain batches assembled into global arrays, orbax
checkpoints every `checkpoint.every` steps, resume from the latest by default, SIGTERM ->
save -> exit, non-finite updates skipped and counted (training stops after
`max_bad_steps` in a row, keeping the last good checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from emotivetalk_jax import sharding as shd
from emotivetalk_jax.train import checkpoint as ckpt
from emotivetalk_jax.train.inputs import make_dataset
from emotivetalk_jax.train.metrics import MetricsWriter
from emotivetalk_jax.train.optim import lr_scales, make_optimizer, scaled_updates
from emotivetalk_jax.train.stages import Stage, abstract_state, build_stage, init_state, make_step
from emotivetalk_jax.train.state import TrainState

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Too many non-finite updates in a row."""


def maybe_initialize_distributed() -> None:
    """`jax.distributed.initialize` when the environment describes a multi-process job:
    EMOTIVETALK_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID (the local script), SLURM, or a
    TPU pod (EMOTIVETALK_DISTRIBUTED=1 lets jax detect everything)."""
    env = os.environ
    if jax.distributed.is_initialized():
        return
    if "EMOTIVETALK_COORDINATOR" in env:
        # CPU collectives across processes (harmless on accelerators); no backend call before initialize
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(env["EMOTIVETALK_COORDINATOR"], int(env["EMOTIVETALK_NUM_PROCESSES"]),
                                   int(env["EMOTIVETALK_PROCESS_ID"]))
    elif env.get("EMOTIVETALK_DISTRIBUTED") == "1":
        jax.distributed.initialize()


@dataclasses.dataclass
class Program:
    """Everything a step needs, placed on a mesh (also used by tests and benchmarks)."""

    stage: Stage
    mesh: Any
    txs: dict
    ema_decay: float
    schedules: dict
    state_shardings: TrainState
    frozen_shardings: Any
    step_fn: Any  # the jitted step
    abstract: TrainState
    mesh_rules: dict  # logical axis -> mesh axes (the config's sharding.mesh_rules)

    def batch_shardings(self, batch: dict) -> dict:
        return shd.batch_shardings(batch, self.mesh, self.mesh_rules)

    def global_batch(self, local: dict) -> dict:
        """Per-process numpy batch -> global jax arrays sharded over `batch`."""
        n = jax.process_count()
        out = {}
        for k, v in local.items():
            v = np.asarray(v)
            gshape = (v.shape[0] * n,) + v.shape[1:]
            out[k] = jax.make_array_from_process_local_data(
                NamedSharding(self.mesh, shd.batch_spec(gshape, self.mesh, self.mesh_rules)), v, gshape)
        return out


def sharding_kw(cfg, component: str = "") -> dict:
    """`rules`, `mesh_rules`, `min_size` for `sharding.param_spec` from the config's tables
    (`cfg.sharding`); component "vae" reads the VAE's own `vae_param_rules`."""
    s = cfg.sharding
    mesh_rules = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in s.mesh_rules.items()}
    if not s.tensor_parallel:
        mesh_rules.update(mlp=None, heads=None)
    table = s.vae_param_rules if component == "vae" else s.param_rules
    return dict(rules=tuple((pattern, tuple(axes)) for pattern, axes in table), mesh_rules=mesh_rules,
                min_size=int(s.min_size))


def frozen_shardings(frozen_state: Any, mesh, cfg) -> Any:
    """Shardings of a stage's frozen models: each by its own table (`Frozen.vae` by the VAE's)."""
    kws = {c: sharding_kw(cfg, c) for c in ("", "vae")}

    def one(path, x):
        name = shd.path_str(path)
        return NamedSharding(mesh, shd.param_spec(name, x.shape, mesh, **kws["vae" if name.startswith("vae.") else ""]))

    return jax.tree_util.tree_map_with_path(one, frozen_state)


def state_shardings(abstract: TrainState, mesh, **kw) -> TrainState:
    rep = NamedSharding(mesh, P())
    params = {g: shd.tree_shardings(p, mesh, **kw) for g, p in abstract.params.items()}
    opt = {g: shd.opt_state_shardings(o, abstract.params[g], mesh, **kw) for g, o in abstract.opt.items()}
    return TrainState(params, shd.tree_shardings(abstract.rest, mesh, **kw), opt, rep, rep, rep, rep)


def build_program(cfg, *, mesh=None, stage: Stage | None = None, donate: bool = True) -> Program:
    """Stage + optimisers + shardings + the jitted step, for `cfg` on `mesh` (default: `cfg.mesh`)."""
    mesh = mesh or shd.make_mesh([tuple(a) for a in cfg.mesh])
    stage = stage or build_stage(cfg)
    txs, schedules = {}, {}
    for g in stage.groups:
        txs[g], schedules[g] = make_optimizer(cfg.optim)
        scales = lr_scales(stage.init_params[g], stage.lr_scale) if stage.lr_scale else None
        if scales is not None:
            txs[g] = scaled_updates(txs[g], scales)
    ema = float(cfg.get("ema_decay", 0.0))
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema}")
    abstract = abstract_state(stage, txs, int(cfg.seed), ema_decay=ema)
    kw = sharding_kw(cfg, "vae" if stage.name == "vae" else "")
    sshard = state_shardings(abstract, mesh, **kw)
    fshard = frozen_shardings(stage.frozen_state, mesh, cfg)
    step = make_step(stage, txs, schedules, compute_dtype=jnp.dtype(cfg.compute_dtype), mesh=mesh,
                     mesh_rules=kw["mesh_rules"], ema_decay=ema)
    rep = NamedSharding(mesh, P())
    jitted = jax.jit(step, in_shardings=(sshard, fshard, None), out_shardings=(sshard, rep),
                     donate_argnums=(0,) if donate else ())
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, sshard)
    return Program(stage, mesh, txs, ema, schedules, sshard, fshard, jitted, abstract, kw["mesh_rules"])


def initial_state(program: Program, seed: int) -> TrainState:
    # distinct host copies: init may share one array between leaves, and donation needs distinct buffers
    host = jax.tree.map(lambda x: np.array(x, copy=True),
                        init_state(program.stage, program.txs, seed, ema_decay=program.ema_decay))
    return jax.device_put(host, program.state_shardings)


def compile_step(program: Program, state: TrainState, frozen: Any, batch: dict, options: dict | None = None):
    """Ahead-of-time compile the step for these (abstract or concrete) arguments."""
    lowered = program.step_fn.lower(state, frozen, batch)
    return lowered.compile(compiler_options=dict(options)) if options else lowered.compile()


def calibrate(program: Program, state: TrainState, frozen: Any, iterator, num_batches: int) -> TrainState:
    """`state` with the stage's fixed data statistics set from the next `num_batches` batches
    (`Stage.calibrate`); the batches are used for nothing else."""
    if num_batches < 1:
        raise ValueError(f"calibrate_batches must be >= 1, got {num_batches}")
    batches = [program.global_batch(next(iterator)) for _ in range(num_batches)]
    rest = program.stage.calibrate(state.rest, frozen, batches)
    log.info("calibrated the %s stage's data statistics on %d batches", program.stage.name, num_batches)
    return state._replace(rest=jax.device_put(rest, program.state_shardings.rest))


def place_frozen(program: Program):
    return jax.device_put(program.stage.frozen_state, program.frozen_shardings)


class _Preemption:
    def __init__(self):
        self.flag = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handle(self, *_):
        log.warning("SIGTERM: saving a checkpoint, then exiting")
        self.flag = True

    def requested(self) -> bool:
        if jax.process_count() == 1:
            return self.flag
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.int32(self.flag))))

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def run_gate(stage: Stage, state: TrainState) -> dict[str, float]:
    """The stage's learning gates (`eval.probes`) on the current parameters (single process:
    the parameters are gathered to the host)."""
    from flax import nnx

    if jax.process_count() > 1:
        return {}
    params = {g: jax.device_get(state.params[g]) for g in stage.groups}
    model = stage.model(params, jax.device_get(state.rest))
    t0 = time.perf_counter()
    gates = stage.gate(model, nnx.merge(stage.frozen_graphdef, stage.frozen_state))
    gates["gate/seconds"] = time.perf_counter() - t0
    return gates


def _config_dict(cfg) -> dict:
    return json.loads(cfg.to_json_best_effort()) if hasattr(cfg, "to_json_best_effort") else dict(cfg)


def train(cfg, workdir: str | os.PathLike) -> dict:
    """Train `cfg.stage` until `cfg.total_steps`; returns {status, step, skipped, last metrics}."""
    maybe_initialize_distributed()
    with _Preemption() as pre:  # from the start: a SIGTERM while compiling saves after the first step
        return _train(cfg, Path(workdir), pre)


def _train(cfg, workdir: Path, pre: "_Preemption") -> dict:
    pid, nproc = jax.process_index(), jax.process_count()
    if pid == 0:
        workdir.mkdir(parents=True, exist_ok=True)
    program = build_program(cfg)
    stage = program.stage
    log.info("stage %s (%s), mesh %s, %d processes", stage.name, cfg.variant, dict(program.mesh.shape), nproc)

    data = make_dataset(cfg.data, stage.data, batch_size=int(cfg.batch_size), seed=int(cfg.seed),
                        process=pid, processes=nproc, audio_encoder=stage.audio_encoder,
                        frozen_outputs=stage.frozen_outputs, cache_dir=workdir)
    iterator = iter(data)
    mngr = ckpt.manager(workdir, keep=int(cfg.checkpoint.keep), async_save=bool(cfg.checkpoint.async_save))
    latest = mngr.latest_step() if cfg.checkpoint.resume else None
    if latest is not None:
        state = ckpt.restore(mngr, latest, program.abstract, iterator)
        log.info("resumed from step %d", latest)
    else:
        state = initial_state(program, int(cfg.seed))
    frozen = place_frozen(program)
    if latest is None and stage.calibrate is not None:
        state = calibrate(program, state, frozen, iterator, int(cfg.calibrate_batches))
    cfg_json = _config_dict(cfg)
    start = int(state.step)
    writer = MetricsWriter(workdir, enabled=pid == 0, resume_step=start)
    total = int(cfg.total_steps)
    every = max(int(cfg.checkpoint.every), 1)
    sample_every = int(cfg.sample_every or 0)
    sample_fn = None
    if stage.sample is not None and sample_every:
        from flax import nnx

        def _sample(state, frozen_state, batch):
            fz = nnx.merge(stage.frozen_graphdef, frozen_state)
            key = jax.random.wrap_key_data(state.rng)
            inp = stage.prepare(fz, batch, key)
            return stage.sample(stage.model(state.params, state.rest), fz, inp, key)

        sample_fn = jax.jit(_sample)

    try:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, disable=not (cfg.progress and pid == 0), dynamic_ncols=True)
    except ImportError:
        bar = None
    status, last = "done", {}
    t_last, n_last = time.perf_counter(), start
    compiled = None
    step = start
    while step < total:
        batch = program.global_batch(next(iterator))
        if compiled is None:
            t0 = time.perf_counter()
            compiled = compile_step(program, state, frozen, batch, dict(cfg.compiler_options))
            log.info("compiled the %s step in %.1f s", stage.name, time.perf_counter() - t0)
            t_last = time.perf_counter()
        state, metrics = compiled(state, frozen, batch)
        step += 1
        if bar is not None:
            bar.update(1)
        if step % int(cfg.log_every) == 0 or step == total:
            m = jax.device_get(metrics)
            now = time.perf_counter()
            dt = (now - t_last) / max(step - n_last, 1)
            t_last, n_last = now, step
            m.update(step_time=dt, examples_per_s=int(cfg.batch_size) / dt)
            writer.write(step, m)
            last = {k: float(v) for k, v in m.items()}
            if bar is not None:
                bar.set_postfix(loss=f"{last['loss']:.4g}")
        bad = int(jax.device_get(state.bad_streak))
        if bad >= int(cfg.max_bad_steps):
            mngr.wait_until_finished()
            writer.close()
            raise NonFiniteError(
                f"{bad} non-finite updates in a row at step {step} (skipped {int(state.skipped)} in all); "
                f"stopping. The last good checkpoint is step {mngr.latest_step()} in {workdir}/checkpoints.")
        if sample_fn is not None and step % sample_every == 0:
            frames = jax.device_get(sample_fn(state, frozen, batch))
            writer.write_video(step, frames)
        if step % every == 0 or step == total:
            ckpt.save(mngr, step, state, iterator, cfg_json)
            if stage.gate is not None and pid == 0 and cfg.get("gate_clips", 0) > 0:
                gates = run_gate(stage, state)  # {} on multi-process runs (the gates gather to one host)
                if gates:
                    writer.write(step, gates)
                    log.info("step %d gates: %s", step, " ".join(f"{k[5:]}={v:.3f}" for k, v in gates.items()))
        if pre.requested():
            if mngr.latest_step() != step:
                ckpt.save(mngr, step, state, iterator, cfg_json, force=True)
            status = "preempted"
            break
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
    if bar is not None:
        bar.close()
    return dict(status=status, step=int(jax.device_get(state.step)), skipped=int(jax.device_get(state.skipped)),
                metrics=last)
