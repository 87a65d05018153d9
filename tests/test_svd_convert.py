"""SVD checkpoint folders: round trips, the CLI, and every bad checkpoint a user can bring."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from emotivetalk_jax import cli
from emotivetalk_jax.convert import (
    ConversionError,
    convert_svd,
    export_diffusers_unet,
    export_native,
    load_diffusers_unet,
    load_diffusers_vae,
    load_model,
)
from emotivetalk_jax.convert.engine import export_tensors
from emotivetalk_jax.convert.svd import SVD_RULES
from emotivetalk_jax.smoke import forward_once, write_random_svd

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return write_random_svd(tmp_path_factory.mktemp("svd") / "repo", "tiny", seed=3)


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_export_then_load_is_bit_identical(repo, tmp_path):
    unet = load_diffusers_unet(repo)
    original = load_file(str(repo / "unet" / WEIGHTS))
    assert _same(export_tensors(unet, SVD_RULES), original)
    export_diffusers_unet(unet, tmp_path / "again")
    assert _same(load_file(str(tmp_path / "again" / WEIGHTS)), original)
    assert json.loads((tmp_path / "again" / "config.json").read_text())["_class_name"] == "UNetSpatioTemporalConditionModel"


def test_bfloat16_load(repo):
    vae = load_diffusers_vae(repo / "vae", dtype=jnp.bfloat16)
    assert vae.encoder.conv_in.kernel.value.dtype == jnp.bfloat16


def test_cli_convert_forward_export(repo, tmp_path, capsys):
    out = tmp_path / "jax"
    assert cli.main(["convert", "svd", str(repo), str(out)]) == 0
    assert (out / "unet" / "state").is_dir() and (out / "vae" / "state").is_dir()
    summary = forward_once(out, frames=3)
    assert summary["finite"] and summary["unet_out"] == (1, 3, 16, 16, 4) and summary["video"] == (3, 32, 32, 3)
    assert cli.main(["convert", "export", str(out), str(tmp_path / "back")]) == 0
    for part in ("unet", "vae"):
        assert _same(load_file(str(tmp_path / "back" / part / WEIGHTS)), load_file(str(repo / part / WEIGHTS)))
    # Converting into a folder that already holds a checkpoint is refused, nothing touched.
    assert cli.main(["convert", "svd", str(repo), str(out)]) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err


def test_native_round_trip(repo, tmp_path):
    written = convert_svd(repo / "unet", tmp_path / "unet", progress=False)
    assert written == {"unet": tmp_path / "unet"}
    a, b = load_diffusers_unet(repo), load_model(tmp_path / "unet")
    assert _same(export_tensors(a, SVD_RULES), export_tensors(b, SVD_RULES))
    assert export_native(tmp_path / "unet", tmp_path / "d")["unet"] == tmp_path / "d"


def _copy(repo, tmp_path, part="unet"):
    dst = tmp_path / part
    shutil.copytree(repo / part, dst)
    return dst


def test_truncated_safetensors(repo, tmp_path):
    folder = _copy(repo, tmp_path)
    w = folder / WEIGHTS
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ConversionError, match="truncated or not safetensors"):
        load_diffusers_unet(folder)


def test_missing_config(repo, tmp_path):
    folder = _copy(repo, tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(ConversionError, match="no config.json"):
        load_diffusers_unet(folder)


def test_config_of_another_class(repo, tmp_path):
    with pytest.raises(ConversionError, match="describes a AutoencoderKLTemporalDecoder, not a UNetSpatioTemporal"):
        load_diffusers_unet(repo / "vae")
    with pytest.raises(ConversionError, match="describes a UNetSpatioTemporalConditionModel"):
        load_diffusers_vae(repo / "unet")


def test_renamed_and_resized_tensors(repo, tmp_path):
    folder = _copy(repo, tmp_path)
    sd = load_file(str(folder / WEIGHTS))
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    sd[key.replace("to_q", "to_query")] = sd.pop(key)
    save_file(sd, str(folder / WEIGHTS))
    with pytest.raises(ConversionError) as e:
        load_diffusers_unet(folder)
    assert "to_query.weight" in str(e.value) and "attn1.to_q.kernel" in str(e.value)

    sd = load_file(str(repo / "unet" / WEIGHTS))
    key = "conv_in.weight"
    sd[key] = sd[key][:, :, :2]
    save_file(sd, str(folder / WEIGHTS))
    with pytest.raises(ConversionError, match=r"conv_in.weight \(32, 8, 2, 3\) -> conv_in.kernel needs \(3, 3, 8, 32\)"):
        load_diffusers_unet(folder)


def test_pickle_only_folder_is_refused(repo, tmp_path):
    folder = _copy(repo, tmp_path)
    (folder / WEIGHTS).rename(folder / "diffusion_pytorch_model.bin")
    with pytest.raises(ConversionError, match="never loaded"):
        load_diffusers_unet(folder)
    assert cli.main(["convert", "svd", str(folder), str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
