"""Sampler configs: `configs/sampler.py:512` or `configs/sampler.py:1024,lip_scale=2.0`.

The argument (`emotivetalk_jax.config_args`, strict) is a comma-separated list: a preset
name (512 or 1024, paper 6.4) and `key=value` overrides of `SamplerConfig` fields (an
unknown one fails listing them); `--config.x=y` works too. Turn the
result into the sampler's dataclass with `sampler_config(config)`.
"""

import dataclasses

import ml_collections

from emotivetalk_jax.config_args import Choice, parse_arg
from emotivetalk_jax.diffusion.sampler import SamplerConfig
from emotivetalk_jax.models.ethd_variants import EMOTIVETALK_512, EMOTIVETALK_1024


def _preset(variant) -> dict:
    ic = variant.inference
    return dict(steps=ic.steps, window=ic.window, overlap=ic.overlap, lip_scale=ic.guidance_scale,
                expr_scale=ic.guidance_scale)


# Paper 6.4 (written once, in models/ethd_variants.py): 25 DDIM steps; 512x512: window 120 /
# overlap 24; 1024x1024: window 32 / overlap 12; two-branch guidance (REFERENCE.md 9).
PRESETS = {"512": _preset(EMOTIVETALK_512), "1024": _preset(EMOTIVETALK_1024)}


def get_config(arg: str = "512") -> ml_collections.ConfigDict:
    spec = {f.name: f.default for f in dataclasses.fields(SamplerConfig)}
    spec["preset"] = Choice("512", tuple(PRESETS))
    preset = parse_arg(arg, where="configs/sampler.py", positional="preset", **spec)["preset"]
    # Parsed again with the preset's values as the defaults: an explicit key=value wins.
    config = ml_collections.ConfigDict(parse_arg(arg, where="configs/sampler.py", positional="preset",
                                                 **{**spec, **PRESETS[preset]}))
    return config


def sampler_config(config: ml_collections.ConfigDict) -> SamplerConfig:
    """The `SamplerConfig` of a config from `get_config` (lists become tuples)."""
    d = {f.name: config[f.name] for f in dataclasses.fields(SamplerConfig)}
    d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return SamplerConfig(**d)
