"""Stage `vae`: SVD's temporal VAE trained as an autoencoder (the synthetic demo has no
converted VAE). A short run lowers the reconstruction error, and stage 2 built with
`init.vae` carries exactly the trained arrays as its frozen VAE, with a scaling factor that
gives its latents unit variance. A decoder-only fine-tune of it keeps the encoder bit for
bit, and `export-bundle --vae` pairs it with that stage 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

FAST = "{'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}"


@pytest.mark.long
def test_vae_stage_learns_feeds_stage_two_and_fine_tunes_its_decoder(tmp_path, capsys):
    from flax import nnx

    from emotivetalk_jax import sharding as shd
    from emotivetalk_jax.models.ethd_variants import get_ethd_variant
    from emotivetalk_jax.train import stages as S
    from emotivetalk_jax.train.checkpoint import restore_model_arrays
    from emotivetalk_jax.train.commands import load_config, train_from_args

    work = tmp_path / "vae"
    steps = 40
    res = train_from_args(["--config", "configs/train.py:stage=vae,variant=tiny", "--workdir", str(work),
                           f"--config.total_steps={steps}", "--config.log_every=1", "--config.checkpoint.every=40",
                           "--config.image_size=16", "--config.frames=2", "--config.batch_size=2",
                           "--config.optim.lr=1e-3", "--config.data.num_clips=4", "--config.progress=False",
                           f"--config.compiler_options={FAST}"])
    assert res["status"] == "done", res
    rows = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    first, last = np.mean([r["l1"] for r in rows[:5]]), np.mean([r["l1"] for r in rows[-5:]])
    assert last < 0.6 * first, (first, last)
    assert all(np.isfinite(r["kl"]) and np.isfinite(r["psnr"]) for r in rows)

    cfg = load_config("configs/train.py:stage=ethd,variant=tiny", [f"--config.init.vae={work}"])
    vae = S.vae_model(cfg, get_ethd_variant("tiny"), 0)
    trained = restore_model_arrays(work)
    # the scaling factor makes stage 2's latents unit-variance: 1 / the run's logged latent std
    want = 1.0 / np.mean([r["latent_std"] for r in rows[-20:]])
    assert abs(vae.config["scaling_factor"] - want) < 1e-6 * want
    flat = {shd.path_str(p): np.asarray(v.value) for p, v in nnx.to_flat_state(nnx.state(vae))}
    assert set(flat) == set(trained)
    for k, v in flat.items():
        np.testing.assert_array_equal(v, trained[k], err_msg=k)
    _decoder_finetune_pairs_with_stage_two(tmp_path, work, capsys)


def test_vae_init_names_a_bad_workdir(tmp_path):
    from emotivetalk_jax.models.ethd_variants import get_ethd_variant
    from emotivetalk_jax.train import stages as S
    from emotivetalk_jax.train.commands import load_config

    cfg = load_config("configs/train.py:stage=ethd,variant=tiny", [f"--config.init.vae={tmp_path / 'nothing'}"])
    with pytest.raises(FileNotFoundError, match="nothing"):
        S.vae_model(cfg, get_ethd_variant("tiny"), 0)
    assert not Path(tmp_path / "nothing").exists()


def _train(work, stage, steps, *extra):
    from emotivetalk_jax.train.commands import train_from_args

    res = train_from_args(["--config", f"configs/train.py:stage={stage},variant=tiny", "--workdir", str(work),
                           f"--config.total_steps={steps}", "--config.log_every=1",
                           f"--config.checkpoint.every={steps}", "--config.batch_size=2", "--config.data.num_clips=4",
                           "--config.progress=False", f"--config.compiler_options={FAST}", *extra])
    assert res["status"] == "done", res


def _split_arrays(arrays):
    dec = {k: v for k, v in arrays.items() if k.startswith("decoder.")}
    return dec, {k: v for k, v in arrays.items() if k not in dec}


def _decoder_finetune_pairs_with_stage_two(tmp_path, base, capsys):
    """vae_train=decoder updates only the decoder, so it pairs with a stage 2 trained on the
    original VAE: `export-bundle --vae` takes its decoder and keeps stage 2's encoder and
    scaling factor, and refuses a VAE whose encoder differs."""
    from flax import nnx

    from emotivetalk_jax import bundle as B
    from emotivetalk_jax import cli
    from emotivetalk_jax import sharding as shd
    from emotivetalk_jax.models.ethd_variants import get_ethd_variant
    from emotivetalk_jax.train import stages as S
    from emotivetalk_jax.train.checkpoint import restore_model_arrays
    from emotivetalk_jax.train.commands import load_config

    vae = ["--config.image_size=16", "--config.frames=2", "--config.optim.lr=1e-3"]
    _train(tmp_path / "dec", "vae", 3, *vae, "--config.vae_train=decoder", f"--config.init.vae={base}",
           "--config.vae_face_weight=2", "--config.vae_lip_weight=3")  # the box-weighted L1 too
    _train(tmp_path / "all", "vae", 1, *vae, f"--config.init.vae={base}")
    base_dec, base_rest = _split_arrays(restore_model_arrays(base))
    dec_dec, dec_rest = _split_arrays(restore_model_arrays(tmp_path / "dec"))
    assert base_rest.keys() == dec_rest.keys() and any(k.startswith("encoder.") for k in base_rest)
    for k in base_rest:
        np.testing.assert_array_equal(dec_rest[k], base_rest[k], err_msg=k)
    changed = [k for k in base_dec if not np.array_equal(base_dec[k], dec_dec[k])]
    assert len(changed) > 0.9 * len(base_dec), (len(changed), len(base_dec))

    for bad, match in (("vae_train=decoder", "set init.vae"), ("vae_train=encoder", "choose all or decoder"),
                       ("vae_lip_weight=0", "vae_lip_weight must be > 0")):
        cfg = load_config("configs/train.py:stage=vae,variant=tiny", [f"--config.{bad}"])
        with pytest.raises(ValueError, match=match):
            S.build_stage(cfg)

    _train(tmp_path / "ethd", "ethd", 1, "--config.frames=4", f"--config.init.vae={base}")
    stage2 = load_config("configs/train.py:stage=ethd,variant=tiny", [f"--config.init.vae={base}"])
    scaling = S.vae_model(stage2, get_ethd_variant("tiny"), 0).config["scaling_factor"]
    out = tmp_path / "bundle"
    assert cli.main(["export-bundle", str(tmp_path / "ethd"), str(out), "--vae", str(tmp_path / "dec")]) == 0
    got = B.load_bundle(out).vae
    flat = {shd.path_str(p): np.asarray(v.value) for p, v in nnx.to_flat_state(nnx.state(got))}
    for k, v in {**dec_dec, **base_rest}.items():
        np.testing.assert_array_equal(flat[k], v, err_msg=k)
    assert got.config["scaling_factor"] == scaling

    capsys.readouterr()
    assert cli.main(["export-bundle", str(tmp_path / "ethd"), str(tmp_path / "b2"), "--vae", str(tmp_path / "all")]) == 2
    err = capsys.readouterr().err.strip()
    assert "differs from the VAE stage 2 trained against" in err and "encoder." in err and "\n" not in err
    assert not (tmp_path / "b2").exists()


def test_vae_expression_loss_adds_the_reconstructions_expression_error():
    """`vae_expression_weight` > 0: the loss reads the reconstruction with the frozen expression
    encoder and adds w * expression_consistency (against the frames' own expression and the
    neutral portrait's) to the L1 + KL; it has a gradient in the decoder. A reference that is
    not always the neutral portrait, and a negative weight, are refused."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from configs.train import get_config
    from emotivetalk_jax.diffusion.ethd_loss import expression_consistency
    from emotivetalk_jax.train.inputs import make_dataset
    from emotivetalk_jax.train.stages import build_stage

    cfg = get_config("stage=vae,variant=tiny")
    cfg.image_size, cfg.frames, cfg.vae_expression_weight, cfg.data.reference_neutral = 16, 2, 0.5, 1.0
    stage = build_stage(cfg)
    assert stage.loss_reads_frozen
    data = get_config("variant=tiny").data
    data.num_clips, data.reference_neutral = 2, 1.0
    batch = next(iter(make_dataset(data, stage.data, batch_size=2, seed=0)))
    g = stage.groups[0]

    @jax.jit
    def run(params, frozen_state, batch):
        frozen = nnx.merge(stage.frozen_graphdef, frozen_state)
        inp = stage.prepare(frozen, batch, jax.random.key(0))

        def total(p):
            model = stage.model({**params, g: p}, stage.init_rest)
            return stage.losses["main"](model, inp, jax.random.key(1), {}, frozen)

        (l, a), grads = jax.value_and_grad(total, has_aux=True)(params[g])
        model = stage.model(params, stage.init_rest)
        x = inp["x"].reshape(-1, *inp["x"].shape[2:])
        rec = model.decode(model.encode(x)[0], 2).reshape(inp["x"].shape)
        want = expression_consistency(frozen.face.encode_expression(rec), inp["e_x"], inp["e_ref"],
                                      jnp.ones((2,), bool))
        return l, a, want, optax.global_norm(grads)

    loss, a, want, gnorm = run(stage.init_params, stage.frozen_state, batch)
    assert np.isfinite(float(a["expr"])) and float(a["expr"]) > 0
    np.testing.assert_allclose(float(a["expr"]), float(want), rtol=1e-4)
    np.testing.assert_allclose(float(loss), float(a["l1"]) + cfg.vae_kl * float(a["kl"]) + 0.5 * float(a["expr"]),
                               rtol=1e-5)
    assert float(gnorm) > 0
    for key, value, match in (("data.reference_neutral", 0.5, "set data.reference_neutral=1"),
                              ("vae_expression_weight", -1.0, "vae_expression_weight must be >= 0")):
        bad = get_config("stage=vae,variant=tiny")
        bad.vae_expression_weight, bad.data.reference_neutral = 0.5, 1.0
        if key == "data.reference_neutral":
            bad.data.reference_neutral = value
        else:
            bad.vae_expression_weight = value
        with pytest.raises(ValueError, match=match):
            build_stage(bad, abstract=True)
