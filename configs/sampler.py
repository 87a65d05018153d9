"""Sampler configs: `configs/sampler.py:512` or `configs/sampler.py:1024,lip_scale=2.0`.

The argument is a comma-separated list: a preset name (512 or 1024, paper 6.4) and
`key=value` overrides of `SamplerConfig` fields; `--config.x=y` works too. Turn the
result into the sampler's dataclass with `sampler_config(config)`.
"""

import ast
import dataclasses

import ml_collections

from emotivetalk_jax.diffusion.sampler import SamplerConfig
from emotivetalk_jax.models.ethd_variants import EMOTIVETALK_512, EMOTIVETALK_1024


def _preset(variant) -> dict:
    ic = variant.inference
    return dict(steps=ic.steps, window=ic.window, overlap=ic.overlap, lip_scale=ic.guidance_scale,
                expr_scale=ic.guidance_scale)


# Paper 6.4 (written once, in models/ethd_variants.py): 25 DDIM steps; 512x512: window 120 /
# overlap 24; 1024x1024: window 32 / overlap 12; two-branch guidance (REFERENCE.md 9).
PRESETS = {"512": _preset(EMOTIVETALK_512), "1024": _preset(EMOTIVETALK_1024)}


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def get_config(arg: str = "512") -> ml_collections.ConfigDict:
    preset, overrides = "512", {}
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if sep:
            overrides[key.strip()] = _value(value.strip())
        elif key.strip() in PRESETS:
            preset = key.strip()
        else:
            raise ValueError(f"unknown sampler preset {key!r}; choose one of {', '.join(PRESETS)}")
    fields = {f.name: f.default for f in dataclasses.fields(SamplerConfig)}
    unknown = set(overrides) - set(fields)
    if unknown:
        raise ValueError(f"unknown sampler settings {sorted(unknown)}")
    config = ml_collections.ConfigDict({**fields, **PRESETS[preset], **overrides})
    config.preset = preset
    return config


def sampler_config(config: ml_collections.ConfigDict) -> SamplerConfig:
    """The `SamplerConfig` of a config from `get_config` (lists become tuples)."""
    d = {f.name: config[f.name] for f in dataclasses.fields(SamplerConfig)}
    d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return SamplerConfig(**d)
