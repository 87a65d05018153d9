"""Stage `reader` (an expression reader for stage 2's expression term, not in the paper), the
term read through it, and stage 2 started from a bundle's parts (`init.*` as native folders)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

FAST = "{'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}"


def _flat(module) -> dict[str, np.ndarray]:
    from emotivetalk_jax import sharding as shd

    return {shd.path_str(p): np.asarray(v.value) for p, v in nnx.to_flat_state(nnx.state(module))}


def test_reader_gate_known_answers():
    """An oracle reading scores r = 1 on every parameter, its negation -1; the min is reported."""
    from emotivetalk_jax.data.synthetic_face import EXPRESSION_KEYS
    from emotivetalk_jax.train.gates import probe_clips
    from emotivetalk_jax.train.stages.reader import reader_gate

    clips = probe_clips("test", 4, 16)
    for sign in (1.0, -1.0):
        truth = iter([sign * c.states[:, 2:6] for c in clips.clips])
        got = reader_gate(lambda f: next(truth), clips)
        assert set(got) == {f"gate/reader_r_{k}" for k in EXPRESSION_KEYS} | {"gate/reader_r_min"}
        for v in got.values():
            np.testing.assert_allclose(v, sign, atol=1e-9)


@pytest.mark.long
def test_reader_learns_and_stage_two_reads_its_expression_term_through_it(tmp_path):
    """A short reader run lowers its error and logs its gate; stage 2 with it as
    `init.expression_reader` carries exactly its arrays, and its expression term is
    expression_consistency of the reader on the decoded D against the reader on the ground truth
    and on the portrait, with a gradient in the backbone; the per-clip frozen cache carries the
    reader's rows (r_v). Misconfigurations are refused."""
    import optax

    from configs.train import get_config
    from emotivetalk_jax.diffusion.ethd_loss import ethd_loss, expression_consistency
    from emotivetalk_jax.models.ethd_variants import get_ethd_variant
    from emotivetalk_jax.train.checkpoint import restore_model_arrays
    from emotivetalk_jax.train.commands import train_from_args
    from emotivetalk_jax.train.inputs import make_dataset
    from emotivetalk_jax.train.stages import build_stage

    work, steps = tmp_path / "reader", 30
    res = train_from_args(["--config", "configs/train.py:stage=reader,variant=tiny", "--workdir", str(work),
                           f"--config.total_steps={steps}", "--config.log_every=1",
                           f"--config.checkpoint.every={steps}", "--config.batch_size=4", "--config.frames=2",
                           "--config.data.num_clips=16", "--config.progress=False", "--config.gate_clips=4",
                           f"--config.compiler_options={FAST}"])
    assert res["status"] == "done", res
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
    gate = [r for r in rows if "gate/reader_r_min" in r]
    assert gate and all(np.isfinite(v) for k, v in gate[-1].items() if k.startswith("gate/reader_r"))

    cfg = get_config("stage=ethd,variant=tiny")
    cfg.e_a_steps, cfg.expression_loss_weight, cfg.init.expression_reader = 1, 0.5, str(work)
    stage = build_stage(cfg)
    frozen0 = nnx.merge(stage.frozen_graphdef, stage.frozen_state)
    trained = restore_model_arrays(work)
    assert _flat(frozen0.reader).keys() == trained.keys()
    for k, v in _flat(frozen0.reader).items():
        np.testing.assert_array_equal(v, trained[k], err_msg=k)
    data = get_config("variant=tiny").data
    data.num_clips = 2
    batch = next(iter(make_dataset(data, stage.data, batch_size=2, seed=0, audio_encoder=stage.audio_encoder)))
    g = stage.groups[0]
    tr = get_ethd_variant("tiny").train
    scaling = float(frozen0.vae.config["scaling_factor"])

    @jax.jit
    def run(params, frozen_state, batch):
        frozen = nnx.merge(stage.frozen_graphdef, frozen_state)
        inp = stage.prepare(frozen, batch, jax.random.key(0))

        def term(p):
            model = stage.model({**params, g: p}, stage.init_rest)
            l, a = stage.losses["main"](model, inp, jax.random.key(1), {}, frozen)
            return a["loss_expr"], (l, a)

        (_, (l, a)), grads = jax.value_and_grad(term, has_aux=True)(params[g])
        # by hand: the same denoising call, decoded, read by the reader
        _, aux = ethd_loss(stage.model(params, stage.init_rest), inp["eb"], jax.random.key(1), p_mean=tr.p_mean,
                           p_std=tr.p_std, p_video=tr.p_video_expr)
        d = aux["denoised"]
        x = frozen.vae.decode((d / scaling).reshape(-1, *d.shape[2:]), d.shape[1])
        x = x.reshape(*d.shape[:2], *x.shape[1:])
        frames = batch["frames"].astype(jnp.float32) / 127.5 - 1.0
        ref = batch["reference"].astype(jnp.float32) / 127.5 - 1.0
        want = expression_consistency(frozen.reader(x), frozen.reader(frames), frozen.reader(ref), aux["kept_expr"])
        return l, a, want, optax.global_norm(grads)

    loss, a, want, gnorm = run(stage.init_params, stage.frozen_state, batch)
    assert np.isfinite(float(a["loss_expr"]))
    np.testing.assert_allclose(float(a["loss_expr"]), float(want), rtol=1e-4)
    np.testing.assert_allclose(float(loss), float(a["loss_x0"]) + 0.5 * float(a["loss_expr"]), rtol=1e-5)
    assert float(gnorm) > 0 or float(want) == 0.0

    # the per-clip cache (`frozen_cache`) carries the reader's rows as r_v
    cfg.frozen_cache = True
    cached = build_stage(cfg).frozen_outputs
    clip = batch["frames"][0]  # (F, S, S, 3) uint8: one short "clip"
    rows = cached.compute(clip, np.zeros((len(clip), stage.audio_encoder.config["hidden_size"]), np.float32))
    np.testing.assert_allclose(rows["r_v"], np.asarray(frozen0.reader(jnp.asarray(clip, jnp.float32) / 127.5 - 1.0)),
                               atol=1e-5, rtol=1e-5)

    cfg.frozen_cache, cfg.expression_loss_weight = False, 0.0
    with pytest.raises(ValueError, match="set expression_loss_weight > 0"):
        build_stage(cfg, abstract=True)
    cfg.expression_loss_weight, cfg.init.expression_reader = 0.5, str(tmp_path)
    with pytest.raises(ValueError, match="not a training workdir"):
        build_stage(cfg)
    rcfg = get_config("stage=reader,variant=tiny")
    rcfg.data.source = "prepared"
    with pytest.raises(ValueError, match="set data.source=synthetic"):
        build_stage(rcfg, abstract=True)


@pytest.mark.long
def test_stage_two_starts_from_a_bundles_parts_and_exports_them(tmp_path, capsys):
    """Every `init.*` path may be a native component folder: stage 2 built from a bundle's parts
    carries the bundle's ETHD, VAE (with its scaling factor), face encoders and V-AID exactly, and
    `export-bundle` of a run started that way gives back the same frozen parts. A part of the
    wrong kind and a folder that holds nothing are refused in one line."""
    from configs.train import get_config
    from emotivetalk_jax import bundle as B
    from emotivetalk_jax import cli
    from emotivetalk_jax.convert.engine import ConversionError
    from emotivetalk_jax.train.commands import train_from_args
    from emotivetalk_jax.train.stages import build_stage

    src = B.make_random_bundle(tmp_path / "src", "tiny", 3, resolution=16)
    parts = dict(ethd="ethd", vae="vae", face_encoders="face_encoders", vaid="vaid", audio="audio")
    init = [f"--config.init.{k}={src / v}" for k, v in parts.items()]
    want = B.load_bundle(src)
    cfg = get_config("stage=ethd,variant=tiny")
    for k, v in parts.items():
        cfg.init[k] = str(src / v)
    stage = build_stage(cfg)
    frozen = nnx.merge(stage.frozen_graphdef, stage.frozen_state)
    assert frozen.vae.config["scaling_factor"] == want.vae.config["scaling_factor"]
    for name, got, ref in (("ethd", stage.model(stage.init_params, stage.init_rest), want.ethd),
                           ("vae", frozen.vae, want.vae), ("face", frozen.face, want.face_encoders),
                           ("vaid", frozen.vaid, want.vaid)):
        a, b = _flat(got), _flat(ref)
        assert a.keys() == b.keys(), name
        for k in b:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}: {k}")

    # stage vae's own init.vae (a decoder fine-tune of the bundle's VAE) reads the folder too
    vcfg = get_config("stage=vae,variant=tiny")
    vcfg.init.vae, vcfg.vae_train = str(src / "vae"), "decoder"
    vstage = build_stage(vcfg)
    a, b = _flat(vstage.model(vstage.init_params, vstage.init_rest)), _flat(want.vae)
    assert a.keys() == b.keys()
    for k in b:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"stage vae: {k}")

    work = tmp_path / "ethd"
    res = train_from_args(["--config", "configs/train.py:stage=ethd,variant=tiny", "--workdir", str(work),
                           "--config.total_steps=1", "--config.checkpoint.every=1", "--config.batch_size=2",
                           "--config.data.num_clips=4", "--config.progress=False", "--config.e_a_steps=1",
                           f"--config.compiler_options={FAST}", *init])
    assert res["status"] == "done", res
    assert cli.main(["export-bundle", str(work), str(tmp_path / "out")]) == 0
    out = B.load_bundle(tmp_path / "out")
    for name in ("vae", "face_encoders", "vaid", "audio"):
        a, b = _flat(getattr(out, name)), _flat(getattr(want, name))
        for k in b:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}: {k}")

    cfg.init.vae = str(src / "face_encoders")
    with pytest.raises(ConversionError, match="not 'vae'"):
        build_stage(cfg)
    cfg.init.vae = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a training workdir"):
        build_stage(cfg)
