"""The configs' argument language (`emotivetalk_jax.config_args`) is strict and shared."""

import pytest

from configs import sampler as sampler_configs
from configs import train as train_configs


def test_a_misspelt_key_fails_naming_the_valid_keys():
    with pytest.raises(ValueError, match=r"unknown key 'varient'; valid keys: smoke, stage, variant"):
        train_configs.get_config("varient=tiny")
    with pytest.raises(ValueError, match=r"unknown key 'step'; valid keys: .*steps"):
        sampler_configs.get_config("512,step=10")


def test_an_unknown_stage_variant_or_preset_fails_naming_the_choices():
    with pytest.raises(ValueError, match=r"unknown stage 'ethdd'; choose one of encoders, vaid, ethd, vae, audio"):
        train_configs.get_config("stage=ethdd")
    with pytest.raises(ValueError, match=r"unknown variant 'small'; choose one of tiny, demo, emotivetalk_512"):
        train_configs.get_config("variant=small")
    with pytest.raises(ValueError, match=r"unknown preset '768'; choose one of 512, 1024"):
        sampler_configs.get_config("768")
    with pytest.raises(ValueError, match=r"'smok' is not a flag; flags: smoke"):
        train_configs.get_config("stage=vaid,smok")
    with pytest.raises(ValueError, match=r"steps='many' is not a int"):
        sampler_configs.get_config("steps=many")


def test_the_arguments_still_mean_what_they_meant():
    c = train_configs.get_config("stage=vaid,variant=demo,smoke")
    assert (c.stage, c.variant, c.total_steps, c.optim.name) == ("vaid", "demo", 4, "adam")
    assert (train_configs.get_config("").stage, train_configs.get_config("").variant) == ("ethd", "tiny")
    # an explicit value equal to SamplerConfig's default still beats the preset's
    assert sampler_configs.get_config("512,lip_scale=1.0").lip_scale == 1.0
    assert sampler_configs.get_config("1024,steps=8").steps == 8


def test_train_overrides_are_config_flags_and_strict():
    from emotivetalk_jax.train.commands import load_config

    c = load_config("configs/train.py:stage=vaid,variant=tiny", [
        "--config.optim.lr=nan", "--config.progress=False", "--config.total_steps=5", "--config.lip_loss_weight=4",
        "--config.mesh=[('data',-1),('fsdp',8),('tensor',1)]", "--config.compiler_options={'a': 0}"])
    assert (c.progress, c.total_steps, c.optim.total_steps, c.lip_loss_weight) == (False, 5, 5, 4.0)
    assert c.mesh == (("data", -1), ("fsdp", 8), ("tensor", 1)) and c.compiler_options.to_dict() == {"a": 0}
    with pytest.raises(ValueError, match=r"^--config.optim.lrr: config.optim has no field 'lrr'; valid keys: b1, b2,"
                                         r"[^\n]* lr, [^\n]*$"):
        load_config("configs/train.py:stage=vaid", ["--config.optim.lrr=1"])
    with pytest.raises(ValueError, match=r"^flag --config.optim.lr=abc: could not convert string to float[^\n]*$"):
        load_config("configs/train.py:stage=vaid", ["--config.optim.lr=abc"])
