"""Model configs: `configs/model.py:variant=tiny` or `configs/model.py:svd`.

The argument is a comma-separated list of `key=value` (or a bare variant name). The
result holds the diffusers configs of the UNet and VAE, overridable from the command line
with `--config.unet.num_frames=14` and the like.
"""

import ml_collections

from emotivetalk_jax.models.variants import get_svd_variant


def _parse(arg: str) -> dict:
    out = {}
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        out[key.strip()] = value.strip() if value else True
    if "variant" not in out:
        bare = [k for k, v in out.items() if v is True]
        out["variant"] = bare[0] if bare else "tiny"
    return out


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = _parse(arg)
    variant = get_svd_variant(args["variant"])
    config = ml_collections.ConfigDict()
    config.variant = variant.name
    config.unet = ml_collections.ConfigDict(dict(variant.unet))
    config.vae = ml_collections.ConfigDict(dict(variant.vae))
    return config
