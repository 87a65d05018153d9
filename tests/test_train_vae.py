"""Stage `vae`: SVD's temporal VAE trained as an autoencoder (the synthetic demo has no
converted VAE). A short run lowers the reconstruction error, and stage 2 built with
`init.vae` carries exactly the trained arrays as its frozen VAE, with a scaling factor that
gives its latents unit variance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FAST = "{'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}"


def test_vae_stage_learns_and_feeds_stage_two(tmp_path):
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
    vae = S._vae(cfg, get_ethd_variant("tiny"), 0)
    trained = restore_model_arrays(work)
    # the scaling factor makes stage 2's latents unit-variance: 1 / the run's logged latent std
    want = 1.0 / np.mean([r["latent_std"] for r in rows[-20:]])
    assert abs(vae.config["scaling_factor"] - want) < 1e-6 * want
    flat = {shd.path_str(p): np.asarray(v.value) for p, v in nnx.to_flat_state(nnx.state(vae))}
    assert set(flat) == set(trained)
    for k, v in flat.items():
        np.testing.assert_array_equal(v, trained[k], err_msg=k)


def test_vae_init_names_a_bad_workdir(tmp_path):
    import pytest

    from emotivetalk_jax.models.ethd_variants import get_ethd_variant
    from emotivetalk_jax.train import stages as S
    from emotivetalk_jax.train.commands import load_config

    cfg = load_config("configs/train.py:stage=ethd,variant=tiny", [f"--config.init.vae={tmp_path / 'nothing'}"])
    with pytest.raises(FileNotFoundError, match="nothing"):
        S._vae(cfg, get_ethd_variant("tiny"), 0)
    assert not Path(tmp_path / "nothing").exists()
