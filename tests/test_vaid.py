"""V-AID modules (projector, Di-CTE, CLUB), face encoders and the stage-0/1 gradient flow.

Tiny models are built abstractly and filled with numpy random values (eager NNX
initialisation compiles one XLA program per initialiser and dominates test time on CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from emotivetalk_jax.data.audio import frame_windows
from emotivetalk_jax.diffusion.long_dicte import vaid_expression
from emotivetalk_jax.losses import (club_loss, club_upper_bound, emotion_label_loss, lip_opening_loss,
                                    masked_reconstruction_loss, vaid_loss)
from emotivetalk_jax.models.club import CLUB
from emotivetalk_jax.models.dicte import DiCTE
from emotivetalk_jax.models.face_encoders import EncoderPretrainer, FaceEncoders, stage0_trainable
from emotivetalk_jax.models.perceiver import AudioLipProjector
from emotivetalk_jax.models.vaid import (
    STAGE1_CLUB, STAGE1_MAIN, VAID, VAIDBatch, frozen, vaid_param_counts,
)
from emotivetalk_jax.models.vaid_variants import TINY, VAID_VARIANTS
from emotivetalk_jax.models.wav2vec2 import Wav2Vec2Model

TINY_WAV2VEC2 = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     conv_dim=(16,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
                     num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
B, F, H = 2, 8, 32
HALF = TINY.perceiver.window_half_width


def _build(factory, seed=0):
    """The model `factory` builds, with numpy-random parameters (fan-in scaled kernels)."""
    model = nnx.eval_shape(factory)
    rng = np.random.default_rng(seed)

    def fill(path, x):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel":
            v = rng.normal(size=x.shape) / np.sqrt(np.prod(x.shape[:-1]))
        elif name == "scale":
            v = 1.0 + 0.1 * rng.normal(size=x.shape)
        else:
            v = 0.05 * rng.normal(size=x.shape)
        return jnp.asarray(v, x.dtype)

    nnx.update(model, jax.tree_util.tree_map_with_path(fill, nnx.state(model)))
    return model


def _path(p) -> str:
    return "." + jax.tree_util.keystr(p, simple=True, separator=".")


def _paths(state) -> set[str]:
    return {_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)}


def _zero_leaves(grads) -> list[str]:
    return [_path(p) for p, g in jax.tree_util.tree_leaves_with_path(grads) if not jnp.any(g != 0)]


def _rand(seed, *shape):
    return jax.random.normal(jax.random.key(seed), shape)


# ---------------------------------------------------------------------------- shapes


def test_from_config_and_param_counts_for_every_variant():
    for name in VAID_VARIANTS:
        counts = vaid_param_counts(name)
        assert counts["vaid"] == counts["audio_lip_projector"] + counts["dicte"] + counts["club"] > 0
    assert vaid_param_counts("emotivetalk_1024") == vaid_param_counts("emotivetalk_512")
    big = VAID_VARIANTS["emotivetalk_512"]
    assert big.perceiver.depth == 4 and big.dicte.train_frames == 220 and big.dicte.prefix_frames == 20
    for cls, cfg in [(AudioLipProjector, big.perceiver), (DiCTE, big.dicte), (CLUB, big.club), (FaceEncoders, big.face)]:
        assert isinstance(nnx.eval_shape(lambda: cls.from_config(cfg, rngs=nnx.Rngs(0))), cls)


def test_projector_is_per_frame():
    proj = _build(lambda: AudioLipProjector.from_config(TINY.perceiver, rngs=nnx.Rngs(0)))
    windows = _rand(0, B, F, 2 * HALF + 1, TINY.perceiver.audio_dim)
    out = proj(windows)
    assert out.shape == (B, F, TINY.perceiver.out_dim)
    moved = proj(windows.at[1, 3].add(1.0))
    changed = np.asarray(jnp.any(moved != out, axis=-1))
    np.testing.assert_array_equal(changed, np.eye(B * F, dtype=bool)[F + 3].reshape(B, F))


def test_vaid_generates_any_length_in_chunks():
    vaid = _build(lambda: VAID.from_config(TINY, rngs=nnx.Rngs(0)))
    n = TINY.dicte.train_frames + 6  # two chunks: 24 from noise, then 4 prefix + 6 new
    windows = _rand(1, 1, n, 2 * HALF + 1, TINY.perceiver.audio_dim)
    l_a = vaid.lip(windows)
    e_a = vaid_expression(vaid, windows, _rand(2, 1, 20, 20, 3), _rand(3, 1, TINY.dicte.expr_dim), jax.random.key(0),
                          steps=2)
    assert l_a.shape == (1, n, TINY.perceiver.out_dim) and e_a.shape == (1, n, TINY.dicte.expr_dim)
    assert bool(jnp.all(jnp.isfinite(e_a)))


def test_face_encoders_shapes():
    enc = _build(lambda: FaceEncoders.from_config(TINY.face, rngs=nnx.Rngs(0)))
    l_v, e_v = enc(_rand(0, B, 3, 48, 48, 3))  # resized to image_size inside
    assert l_v.shape == (B, 3, TINY.face.lip_dim) and e_v.shape == (B, 3, TINY.face.expr_dim)


# ---------------------------------------------------------------------------- stage 0


def _stage0_inputs():
    x_ref, x_drv = _rand(0, 4, H, H, 3), _rand(1, 4, H, H, 3)
    configs = jnp.array([0, 1, 2, 2])
    lip = jnp.zeros((4, H, H, 1)).at[:, 20:28, 10:22].set(1.0)
    face = jnp.zeros((4, H, H, 1)).at[:, 4:30, 4:28].set(1.0)
    return x_ref, x_drv, configs, lip, face


def _stage0_loss(model, x_ref, x_drv, configs, lip, face):
    pred, logits, opening = model.reconstruct(x_ref, x_drv, configs)
    loss = masked_reconstruction_loss(pred, x_drv, configs, lip, face)
    if logits is not None:  # the demo's emotion label term; one row unlabelled
        loss = loss + emotion_label_loss(logits, jnp.array([3, -1, 0, 7]))
    if opening is not None:  # the demo's landmark mouth-opening term
        loss = loss + lip_opening_loss(opening, _rand(5, 4, 68, 2))
    return loss


@pytest.mark.parametrize("train_backbone,demo", [(True, False), (False, False), (True, True)])
def test_stage0_gradients_reach_every_trainable_parameter(train_backbone, demo):
    """Also for the demo's encoder: a flattened last map and a linear emotion head on e_v."""
    face = TINY.face if train_backbone else TINY.override("t", face=dict(train_backbone=False)).face
    if demo:
        face = TINY.override("t", face=dict(image_size=H, backbone_channels=(8, 16, 16), pool="flatten")).face
    model = _build(lambda: EncoderPretrainer(face, TINY.decoder, emotions=8 if demo else 0, opening_head=demo,
                                             rngs=nnx.Rngs(0)))
    wrt = stage0_trainable(face)
    grads = nnx.jit(nnx.grad(_stage0_loss, argnums=nnx.DiffState(0, wrt)))(model, *_stage0_inputs())
    assert _paths(grads) == _paths(nnx.state(model, wrt))
    assert _zero_leaves(grads) == []
    if not train_backbone:
        assert not any("backbone" in p or "to_mouth" in p or "emo_embed" in p for p in _paths(grads))
        assert any("lip_adapter" in p for p in _paths(grads)) and any("decoder" in p for p in _paths(grads))
    assert any("emotion_head" in p for p in _paths(grads)) == demo
    assert any("opening_head" in p for p in _paths(grads)) == demo


def test_flatten_pool_projects_the_whole_last_map():
    """pool="flatten": the projection reads the (H/4, W/4, C) map row-major, not its mean."""
    face = TINY.override("t", face=dict(image_size=16, backbone_channels=(4, 8), pool="flatten")).face
    bb = _build(lambda: FaceEncoders(face, rngs=nnx.Rngs(0))).backbone
    x = _rand(0, 2, 16, 16, 3)
    h = bb.blocks[1](bb.downs[0](bb.blocks[0](bb.conv_in(x))))
    h = jax.nn.silu(bb.norm_out(h))
    assert h.shape == (2, 4, 4, 8) and bb.proj.kernel.shape == (8 * 4 * 4, face.feature_dim)
    np.testing.assert_allclose(bb(x), h.reshape(2, -1) @ bb.proj.kernel[...] + bb.proj.bias[...], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="choose mean or flatten"):
        FaceEncoders(TINY.override("t", face=dict(pool="max")).face, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------- stage 1


class Stage1System(nnx.Module):
    """Frozen audio encoder + frozen face encoders + the trainable V-AID."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.audio_encoder = Wav2Vec2Model.from_hf_config(TINY_WAV2VEC2, rngs=rngs)
        self.face_encoders = FaceEncoders(TINY.face, rngs=rngs)
        self.vaid = VAID(TINY, rngs=rngs)


def _stage1_loss(system, wave, frames, x_ref, key):
    feats = system.audio_encoder(wave)[-1][:, : 2 * F]  # 50 Hz -> 25 fps: mean of pairs
    per_frame = feats.reshape(B, F, 2, -1).mean(axis=2)
    windows = jax.vmap(lambda x: frame_windows(x, HALF))(per_frame)
    l_v, e_v = system.face_encoders(frames)
    return vaid_loss(system.vaid, VAIDBatch(windows, x_ref, l_v, e_v), key)


@pytest.fixture(scope="module")
def stage1():
    system = _build(lambda: Stage1System(rngs=nnx.Rngs(0)))
    inputs = (_rand(0, B, 640 * F + 400), _rand(1, B, F, H, H, 3), _rand(2, B, H, H, 3), jax.random.key(3))
    return system, inputs


def test_stage1_main_step_trains_projector_and_dicte_only(stage1):
    system, inputs = stage1
    step = nnx.jit(nnx.value_and_grad(_stage1_loss, argnums=nnx.DiffState(0, STAGE1_MAIN), has_aux=True))
    (loss, aux), grads = step(system, *inputs)
    assert bool(jnp.isfinite(loss))
    expected = _paths(nnx.state(system, STAGE1_MAIN))
    assert _paths(grads) == expected
    assert all(".vaid.projector" in p or ".vaid.dicte" in p for p in expected)
    assert _zero_leaves(grads) == []

    # The CLUB term passes no gradient to q, whatever filter a caller uses.
    frozen_q = nnx.grad(lambda v: club_upper_bound(frozen(v.club), aux["l_a"], aux["e_a"]))(system.vaid)
    assert sorted(_zero_leaves(frozen_q)) == sorted(_paths(frozen_q))

    # q's own update reaches every q parameter and nothing else.
    q_grads = nnx.grad(club_loss, argnums=nnx.DiffState(0, STAGE1_CLUB))(system.vaid, aux["l_a"], aux["e_a"])
    assert _paths(q_grads) == _paths(nnx.state(system.vaid, STAGE1_CLUB))
    assert _zero_leaves(q_grads) == []
