"""The evaluation networks' official checkpoints (re-saved as safetensors) <-> the NNX modules.

One table per network on the common leaf rules; batch norms keep their running
statistics as parameters (`FrozenBatchNorm.mean` / `.var`), `num_batches_tracked` is
dropped. Each file is one flat state dict, written by the user from the official
checkpoint in their own environment (README, "Evaluation"):

    fid     pytorch-fid's pt_inception-2015-12-05-6726825d.pth (its 1008-way `fc` dropped)
    fvd     VideoGPT's / pytorch-i3d's i3d_pretrained_400.pt (Kinetics-400 I3D)
    sync    syncnet_python's syncnet_v2.model
    face3d  Deep3DFaceRecon_pytorch's checkpoints/<name>/epoch_20.pth, its "net_recon" entry

Pickles are never loaded here: a `.pth` / `.pt` / `.model` path is refused with the
re-save recipe.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
from flax import nnx
from safetensors import SafetensorError
from safetensors.numpy import load_file

from emotivetalk_jax.convert.engine import COMMON_RULES, ConversionError, Rule, load_into
from emotivetalk_jax.models.metrics.face3d import ReconNet
from emotivetalk_jax.models.metrics.i3d import InceptionI3d
from emotivetalk_jax.models.metrics.inception import FIDInceptionV3
from emotivetalk_jax.models.metrics.syncnet import BN_INDEX, SyncNet

_STATS: tuple[Rule, ...] = (
    Rule("*.running_mean", "*.mean"),
    Rule("*.running_var", "*.var"),
    Rule("*.num_batches_tracked", None),
)

INCEPTION_RULES: tuple[Rule, ...] = (
    Rule("fc.*", None),  # the 1008-way classifier: FID reads the pool features
    Rule("AuxLogits.*", None),
    *_STATS,
    Rule("*.bn.weight", "*.bn.scale"),
    *COMMON_RULES,
)

I3D_RULES: tuple[Rule, ...] = (*_STATS, Rule("*.bn.weight", "*.bn.scale"), *COMMON_RULES)

SYNCNET_RULES: tuple[Rule, ...] = (
    *_STATS,
    *(Rule(f"netcnn#.{i}.weight", f"netcnn#.{i}.scale") for i in BN_INDEX),
    Rule("netfc#.1.weight", "netfc#.1.scale"),
    *COMMON_RULES,
)

FACE3D_RULES: tuple[Rule, ...] = (
    *_STATS,
    Rule("*.bn#.weight", "*.bn#.scale"),
    Rule("*.downsample.1.weight", "*.downsample.1.scale"),
    *COMMON_RULES,
)

# metric -> (what the file is, NNX class, rule table)
NETWORKS: dict[str, tuple[str, Callable[..., nnx.Module], tuple[Rule, ...]]] = {
    "fid": ("pytorch-fid InceptionV3 (pt_inception-2015-12-05)", FIDInceptionV3, INCEPTION_RULES),
    "fvd": ("I3D Kinetics-400 (i3d_pretrained_400)", InceptionI3d, I3D_RULES),
    "sync": ("SyncNet (syncnet_v2.model)", SyncNet, SYNCNET_RULES),
    "face3d": ("Deep3DFaceRecon ResNet-50 (epoch_20.pth net_recon)", ReconNet, FACE3D_RULES),
}

_PICKLES = (".pth", ".pt", ".model", ".bin", ".ckpt", ".pkl", ".tar")


def read_safetensors(path: str | os.PathLike, what: str) -> dict:
    """All tensors of one .safetensors file; pickled checkpoints are refused, never opened."""
    file = Path(path)
    if file.suffix in _PICKLES:
        raise ConversionError(
            f"{file} is a pickled PyTorch checkpoint; pickles can run code and are never loaded. Re-save it as "
            f"safetensors in your own environment (README, 'Evaluation'): torch.load + safetensors.torch.save_file")
    if not file.is_file():
        raise ConversionError(f"{what} weights {file} do not exist; pass the .safetensors file")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise ConversionError(f"cannot read {file} as safetensors ({e}); re-save it from the official checkpoint") from e


def abstract_network(metric: str) -> nnx.Module:
    """The metric's network with shapes only (nothing allocated)."""
    _, cls, _ = NETWORKS[metric]
    return nnx.eval_shape(lambda: cls(rngs=nnx.Rngs(0)))


def load_metric_network(metric: str, path: str | os.PathLike) -> nnx.Module:
    """The network of `metric` ("fid", "fvd", "sync", "face3d") filled strictly from a safetensors file."""
    if metric not in NETWORKS:
        raise ValueError(f"unknown metric network {metric!r}; one of {', '.join(NETWORKS)}")
    what, _, rules = NETWORKS[metric]
    tensors = read_safetensors(path, what)
    return load_into(abstract_network(metric), tensors, rules, dtype=jnp.float32, what=f"{path} ({what})")
