"""SyncNet (Chung & Zisserman 2016), the network of the Sync-C / Sync-D scores (`eval.syncnet`).

Shape legend: B windows, T frames (5 per window), H, W spatial (224), C channels.

`SyncNet` is syncnet_python's `S` (github.com/joonson/syncnet_python, SyncNetModel.py):
an audio tower over 13 x 20 MFCC patches (0.2 s) and a lip tower over 5 face frames,
each ending in a 1024-d embedding. Its `nn.Sequential` indices are kept as list indices
(`netcnnaud.0` conv, `netcnnaud.1` batch norm, ...), so `syncnet_v2.model`'s keys map by
splitting on dots; positions of parameter-free layers hold None.
"""

from __future__ import annotations

import jax
from flax import nnx

from emotivetalk_jax.models.metrics.layers import FrozenBatchNorm, conv, max_pool

SIZE = 224
WINDOW = 5  # video frames per lip embedding
EMBED = 1024

# Sequential indices of syncnet_python's towers: (conv indices, batch-norm indices).
CONV_INDEX = (0, 4, 8, 11, 14, 18)
BN_INDEX = (1, 5, 9, 12, 15, 19)
_AUD = ((1, 64, (3, 3), 1), (64, 192, (3, 3), 1), (192, 384, (3, 3), 1), (384, 256, (3, 3), 1),
        (256, 256, (3, 3), 1), (256, 512, (5, 4), 0))
_LIP = ((3, 96, (5, 7, 7), (1, 2, 2), 0), (96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)),
        (256, 256, (1, 3, 3), 1, (0, 1, 1)), (256, 256, (1, 3, 3), 1, (0, 1, 1)), (256, 256, (1, 3, 3), 1, (0, 1, 1)),
        (256, 512, (1, 6, 6), 1, 0))


def _tower(convs: list, bns: list) -> nnx.List:
    slots: list = [None] * (BN_INDEX[-1] + 1)
    for i, j, c, b in zip(CONV_INDEX, BN_INDEX, convs, bns):
        slots[i], slots[j] = c, b
    return nnx.List(slots)


def _fc(rngs: nnx.Rngs) -> nnx.List:
    return nnx.List([nnx.Linear(512, 512, rngs=rngs), FrozenBatchNorm(512), None,
                     nnx.Linear(512, EMBED, rngs=rngs)])


class SyncNet(nnx.Module):
    """syncnet_python `S(num_layers_in_fc_layers=1024)` in eval mode."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.netcnnaud = _tower([conv(ci, co, k, padding=p, bias=True, rngs=rngs) for ci, co, k, p in _AUD],
                                [FrozenBatchNorm(co) for _, co, _, _ in _AUD])
        self.netfcaud = _fc(rngs)
        self.netfclip = _fc(rngs)
        self.netcnnlip = _tower(
            [conv(ci, co, k, stride=s, padding=p, bias=True, ndim=3, rngs=rngs) for ci, co, k, s, p in _LIP],
            [FrozenBatchNorm(co) for _, co, _, _, _ in _LIP])

    def _block(self, tower: nnx.List, i: int, x: jax.Array) -> jax.Array:
        return jax.nn.relu(tower[BN_INDEX[i]](tower[CONV_INDEX[i]](x)))

    @staticmethod
    def _head(fc: nnx.List, x: jax.Array) -> jax.Array:
        return fc[3](jax.nn.relu(fc[1](fc[0](x))))

    def forward_aud(self, mfcc: jax.Array) -> jax.Array:
        """mfcc (B, 13, 20, 1) (cepstra x time) -> (B, 1024)."""
        t = self.netcnnaud
        x = self._block(t, 1, self._block(t, 0, mfcc))
        x = max_pool(x, (3, 3), (1, 2))
        x = self._block(t, 4, self._block(t, 3, self._block(t, 2, x)))
        x = self._block(t, 5, max_pool(x, (3, 3), (2, 2)))
        return self._head(self.netfcaud, x.reshape(x.shape[0], -1))

    def forward_lip(self, frames: jax.Array) -> jax.Array:
        """frames (B, 5, 224, 224, 3) BGR in 0..255 -> (B, 1024)."""
        t = self.netcnnlip
        x = max_pool(self._block(t, 0, frames), (1, 3, 3), (1, 2, 2))
        x = max_pool(self._block(t, 1, x), (1, 3, 3), (1, 2, 2), (0, 1, 1))
        x = self._block(t, 4, self._block(t, 3, self._block(t, 2, x)))
        x = self._block(t, 5, max_pool(x, (1, 3, 3), (1, 2, 2)))
        return self._head(self.netfclip, x.reshape(x.shape[0], -1))
