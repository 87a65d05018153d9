"""orbax checkpoints that survive preemption.

`WORKDIR/checkpoints/<step>/` holds three items:
  state   the `TrainState` (params, rest, optimiser states, step, counters, rng) - sharded
          arrays, each host writes its shards;
  data    the grain iterator state of every process (grain's own handler, one file each);
  config  the run's config as JSON.
Saves are asynchronous (the step loop continues while the previous save is written);
orbax commits a step only once all of it is on disk, so a kill -9 mid-save leaves the
previous step as the latest. `latest_step` + `restore` resume from it.
"""

from __future__ import annotations

import os
from pathlib import Path

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from emotivetalk_jax import sharding as shd
from emotivetalk_jax.train.state import TrainState


def manager(workdir: str | os.PathLike, *, keep: int = 3, async_save: bool = True,
            every: int = 1) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=1,
                                           enable_async_checkpointing=async_save, create=True)
    handlers = _handlers(ocp.StandardCheckpointHandler())
    return ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options,
                                 item_names=tuple(handlers), item_handlers=handlers)


def _handlers(state_handler) -> dict:
    """A handler for each of the three items (orbax warns about items it has no handler for)."""
    return {"state": state_handler, "data": grain.checkpoint.CheckpointHandler(), "config": ocp.JsonCheckpointHandler()}


def save(mngr: ocp.CheckpointManager, step: int, state: TrainState, iterator, config: dict, *,
         force: bool = False) -> bool:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state._asdict()),
                              data=grain.checkpoint.CheckpointSave(iterator), config=ocp.args.JsonSave(config))
    return mngr.save(step, args=args, force=force)


def restore(mngr: ocp.CheckpointManager, step: int, abstract: TrainState, iterator) -> TrainState:
    """Restore `step` into `abstract` (ShapeDtypeStructs carrying the target shardings) and the
    iterator (in place)."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract._asdict()),
                              data=grain.checkpoint.CheckpointRestore(iterator))
    out = mngr.restore(step, args=args)
    return TrainState(**out["state"])


def restore_model_arrays(workdir: str | os.PathLike, *, ema: bool = False,
                         step: int | None = None) -> dict[str, np.ndarray]:
    """{dotted model path: array} of the latest checkpoint in a training workdir (its params of
    every group and the rest), for starting a stage from the previous stage's output.
    `ema=True`: where the run kept a moving average (`params["ema"]`, config `ema_decay`), its
    arrays replace the first group's. `step`: that checkpoint instead of the latest."""
    root = Path(workdir).absolute() / "checkpoints"
    if not root.is_dir():  # checked first: the manager would create the folder
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints; is {workdir} a training workdir?")
    options = ocp.CheckpointManagerOptions(create=False)
    handlers = _handlers(ocp.PyTreeCheckpointHandler())  # matches PyTreeRestore; only `state` is read
    mngr = ocp.CheckpointManager(root, options=options, item_names=tuple(handlers), item_handlers=handlers)
    if step is None:
        step = mngr.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
    elif step not in mngr.all_steps():
        have = ", ".join(map(str, mngr.all_steps())) or "none"
        mngr.close()
        raise FileNotFoundError(f"no checkpoint of step {step} in {workdir}/checkpoints (kept: {have})")
    meta = mngr.item_metadata(step)["state"]
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    wanted = {"params": meta["params"], "rest": meta["rest"]}
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), wanted)
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=abstract, restore_args=jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=dev), abstract),
        partial_restore=True)))["state"]
    mngr.close()
    arrays = {}
    trees = [t for g, t in out["params"].items() if g != "ema"] + [out["rest"]]
    if ema and "ema" in out["params"]:
        trees.append(out["params"]["ema"])
    for tree in trees:
        for p, x in jax.tree_util.tree_leaves_with_path(tree):
            arrays[shd.path_str(p)] = np.asarray(x)
    return arrays
