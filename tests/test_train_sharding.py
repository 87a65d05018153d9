"""Sharded training: mesh config, golden partition specs, and one step of every stage on an
8-device (2 x 4) CPU mesh equal to the single-device step, with parameters and moments
really sharded. The 8-device part runs in a subprocess (XLA_FLAGS must precede jax)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from configs.train import get_config
from emotivetalk_jax import sharding as shd
from emotivetalk_jax.train.loop import sharding_kw

ROOT = Path(__file__).resolve().parents[1]
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def test_mesh_config_resolves():
    assert shd.resolve_mesh_shape([("data", -1), ("fsdp", 4), ("tensor", 1)], 8) == (("data", "fsdp", "tensor"), (2, 4, 1))
    with pytest.raises(ValueError):
        shd.resolve_mesh_shape([("data", -1), ("fsdp", 3)], 8)
    with pytest.raises(ValueError):
        shd.resolve_mesh_shape([("data", -1), ("fsdp", -1)], 8)


def test_golden_partition_specs():
    """FSDP on `embed` (fsdp=4), tensor parallel on `mlp` / `heads` (tensor=2), small arrays replicated."""
    mesh = AbstractMesh((1, 4, 2), ("data", "fsdp", "tensor"))
    golden = {
        # path, shape -> spec
        ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.kernel", (32, 32)): P(),  # 1024 < min size
        ("mid_block.attentions.0.transformer_blocks.0.attn1.to_q.kernel", (320, 320)): P("fsdp", "tensor"),
        ("mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0.kernel", (320, 320)): P("tensor", "fsdp"),
        ("mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.kernel", (320, 2560)): P("fsdp", "tensor"),
        ("mid_block.attentions.0.transformer_blocks.0.ff.net.2.kernel", (1280, 320)): P("tensor", "fsdp"),
        ("down_blocks.1.resnets.0.spatial_res_block.conv1.kernel", (3, 3, 320, 640)): P(None, None, "fsdp", "tensor"),
        ("down_blocks.1.resnets.0.temporal_res_block.conv1.kernel", (3, 1, 1, 640, 640)): P(None, None, None, "fsdp", "tensor"),
        ("conv_in.kernel", (3, 3, 8, 320)): P(None, None, "fsdp", "tensor"),
        ("conv_out.kernel", (3, 3, 320, 4)): P(None, None, "fsdp"),  # 4 out channels do not split over tensor=2? they do
        ("mid_block.resnets.0.spatial_res_block.norm1.scale", (1280,)): P(),
        ("time_embedding.linear_1.bias", (1280,)): P(),
        ("up_blocks.0.resnets.0.time_mixer.mix_factor", (1,)): P(),
        ("lip_proj.kernel", (510, 1024)): P(None, "tensor"),  # 510 does not divide by fsdp=4
    }
    kw = sharding_kw(get_config())  # the rule tables are the train config's data
    rules, mesh_rules = kw["rules"], kw["mesh_rules"]
    got = {k: shd.param_spec(k[0], k[1], mesh, rules=rules, mesh_rules=mesh_rules) for k in golden}
    golden[("conv_out.kernel", (3, 3, 320, 4))] = P(None, None, "fsdp", "tensor")
    assert got == golden
    assert shd.batch_spec((8, 4, 8, 8, 4), mesh, mesh_rules) == P("fsdp")
    assert shd.batch_spec((2, 3), AbstractMesh((2, 4, 1), ("data", "fsdp", "tensor")), mesh_rules) == P("data")
    no_tp = dict(mesh_rules, mlp=None, heads=None)
    assert shd.param_spec("a.ff.net.0.proj.kernel", (320, 2560), mesh, rules=rules, mesh_rules=no_tp) == P("fsdp")



def test_sharding_rules_are_config_data_with_the_vaes_own_table():
    """The VAE reads its own table (cfg.sharding.vae_param_rules), in stage vae and as stage 2's frozen
    VAE; on every VAE parameter it gives the specs the model table gave."""
    from flax import nnx

    from emotivetalk_jax.models.ethd_variants import get_ethd_variant
    from emotivetalk_jax.train import stages as S

    cfg = get_config("stage=vae,variant=tiny")
    cfg.sharding.min_size = 1  # the tiny VAE's arrays are small
    mesh = AbstractMesh((1, 4, 2), ("data", "fsdp", "tensor"))
    vae = S.vae_model(cfg, get_ethd_variant("tiny"), 0, abstract=True)
    model, own = sharding_kw(cfg), sharding_kw(cfg, "vae")
    assert own["rules"] != model["rules"] and own["mesh_rules"] == model["mesh_rules"]
    leaves = [(shd.path_str(p), v.value.shape) for p, v in nnx.to_flat_state(nnx.state(vae))]
    assert any(shd.param_spec(k, s, mesh, **own) != P() for k, s in leaves)
    for k, s in leaves:
        assert shd.param_spec(k, s, mesh, **own) == shd.param_spec(k, s, mesh, **model), k
    cfg.sharding.vae_param_rules = ((r".*", ()),)  # data: a run replicates its VAE by config alone
    assert all(shd.param_spec(k, s, mesh, **sharding_kw(cfg, "vae")) == P() for k, s in leaves)

_WORKER = textwrap.dedent(r'''
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, ROOT)
    from configs.train import get_config
    from emotivetalk_jax import sharding as shd
    from emotivetalk_jax.train import loop
    from emotivetalk_jax.train.inputs import make_dataset
    from emotivetalk_jax.train.stages import build_stage

    assert jax.device_count() == 8
    out = {}
    for stage_name, opt in STAGES:
        c = get_config(f"stage={stage_name},variant=tiny")
        c.batch_size = 8
        c.data.num_clips = 8
        c.optim.name = opt
        # Adam's first step is lr * g / (|g| + eps): with the default eps a gradient entry near 0
        # flips between +-lr on float noise; a larger eps keeps the comparison about sharding.
        c.optim.eps = 1e-3
        # 8-bit moments for the 23 largest arrays (>= 16384 entries, the largest among them) rather
        # than 186: each quantised array adds its own kernels to an XLA compile that dominates this test.
        c.optim.min_8bit_size = 16384
        c.sharding.min_size = 1024
        c.e_a_steps = 1
        if stage_name == "vaid":
            c.frames = 6
        stage = build_stage(c)
        it = iter(make_dataset(c.data, stage.data, batch_size=8, seed=0, audio_encoder=stage.audio_encoder))
        local = next(it)
        res = {}
        for name, mesh_cfg, devs in (("one", [("data", 1), ("fsdp", 1), ("tensor", 1)], jax.devices()[:1]),
                                     ("eight", [("data", 2), ("fsdp", 4), ("tensor", 1)], jax.devices())):
            prog = loop.build_program(c, mesh=shd.make_mesh(mesh_cfg, devs), stage=stage)
            state = loop.initial_state(prog, 0)
            frozen = loop.place_frozen(prog)
            batch = prog.global_batch(local)
            step = loop.compile_step(prog, state, frozen, batch, FAST)
            new, m = step(state, frozen, batch)
            res[name] = (jax.device_get(new.params), {k: float(v) for k, v in jax.device_get(m).items()}, new)
        p1, m1, _ = res["one"]
        p8, m8, s8 = res["eight"]
        diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)))
        # the largest parameter and its first moment: sharded, with per-device shards of 1/4 of it
        flat = jax.tree_util.tree_leaves_with_path(s8.params["main"])
        path, big = max(flat, key=lambda kv: kv[1].size)
        opt_leaves = [x for x in jax.tree.leaves(s8.opt["main"]) if x.shape == big.shape]
        out[stage_name] = dict(loss1=m1["loss"], loss8=m8["loss"], metrics1=m1, metrics8=m8, param_diff=diff,
                               big=shd.path_str(path), big_shape=list(big.shape), big_spec=str(big.sharding.spec),
                               big_shard=list(big.addressable_shards[0].data.shape),
                               moment_specs=[str(x.sharding.spec) for x in opt_leaves],
                               moment_shards=[list(x.addressable_shards[0].data.shape) for x in opt_leaves],
                               moment_dtypes=[str(x.dtype) for x in opt_leaves])
    print("RESULT" + json.dumps(out))
''')


def _run_worker(stages):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    code = f"ROOT = {str(ROOT)!r}\nSTAGES = {stages!r}\nFAST = {FAST!r}\n" + _WORKER
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def _check(res):
    for name, r in res.items():
        np.testing.assert_allclose(r["loss8"], r["loss1"], rtol=1e-5, atol=1e-6, err_msg=name)
        for k, v in r["metrics1"].items():
            if k.startswith(("loss", "grad_norm")):
                np.testing.assert_allclose(r["metrics8"][k], v, rtol=1e-5, atol=1e-6, err_msg=f"{name} {k}")
        assert r["param_diff"] < 1e-5, (name, r["param_diff"])
        # the largest parameter is FSDP-sharded: 4 shards along its `embed` axis
        assert "fsdp" in r["big_spec"], r
        assert int(np.prod(r["big_shard"])) * 4 == int(np.prod(r["big_shape"])), r
        assert r["moment_specs"] and all("fsdp" in s for s in r["moment_specs"]), r
        assert all(int(np.prod(s)) * 4 == int(np.prod(r["big_shape"])) for s in r["moment_shards"]), r


@pytest.mark.long
@pytest.mark.parametrize("stage,optimizer", [("encoders", "adam"), ("vaid", "adam"), ("ethd", "adam8bit")])
def test_every_stage_step_on_8_devices_equals_one_device(stage, optimizer):
    res = _run_worker([(stage, optimizer)])  # one subprocess per stage, so that xdist can spread them
    _check(res)
    if optimizer == "adam8bit":
        assert res[stage]["moment_dtypes"] == ["uint8", "uint8"]  # 8-bit moments, sharded like the parameter
