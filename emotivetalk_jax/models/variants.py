"""Named model variants: the diffusers configs that build each backbone.

A variant is data: the UNet and VAE configs in diffusers' own config.json vocabulary, so
that a converted real checkpoint and a variant built from scratch are the same thing.
Variants inherit by overriding a few fields of another, never by copying it.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any, Mapping

# diffusers' UNetSpatioTemporalConditionModel defaults are SVD / SVD-XT's UNet.
SVD_UNET: Mapping[str, Any] = MappingProxyType(
    dict(
        sample_size=96,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",),
        up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3,
        block_out_channels=(320, 640, 1280, 1280),
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=768,
        layers_per_block=2,
        cross_attention_dim=1024,
        transformer_layers_per_block=1,
        num_attention_heads=(5, 10, 20, 20),
        num_frames=25,
    )
)

SVD_VAE: Mapping[str, Any] = MappingProxyType(
    dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=768,
        scaling_factor=0.18215,
        force_upcast=True,
    )
)


@dataclasses.dataclass(frozen=True)
class SVDVariant:
    """The SVD backbone pair of a variant, in diffusers config vocabulary."""

    name: str
    unet: Mapping[str, Any]
    vae: Mapping[str, Any]

    def override(self, name: str, *, unet: Mapping[str, Any] = {}, vae: Mapping[str, Any] = {}) -> "SVDVariant":
        return SVDVariant(name, MappingProxyType({**self.unet, **unet}), MappingProxyType({**self.vae, **vae}))


SVD = SVDVariant("svd", SVD_UNET, SVD_VAE)

# Small enough to run a forward in well under a second on a 2-core CPU.
TINY = SVD.override(
    "tiny",
    unet=dict(
        sample_size=16,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 64),
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24,
        layers_per_block=1,
        cross_attention_dim=32,
        num_attention_heads=(2, 4),
        num_frames=4,
    ),
    vae=dict(
        down_block_types=("DownEncoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
    ),
)

# Audio encoders (Hugging Face config vocabulary) used when no converted checkpoint is given:
# wav2vec2-base for the full variants, REFERENCE.md's tiny wav2vec2 (width 32) for `tiny`.
BASE_AUDIO: Mapping[str, Any] = MappingProxyType(dict(
    model_type="wav2vec2", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, mask_time_prob=0.0,
))
TINY_AUDIO: Mapping[str, Any] = MappingProxyType(dict(
    model_type="wav2vec2", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    conv_dim=(16,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, mask_time_prob=0.0,
))

CPU_SIZED = ("tiny", "demo")  # ETHD / V-AID variants that pair with the tiny audio encoder


def default_audio_config(variant: str) -> Mapping[str, Any]:
    """The audio encoder a variant gets when no converted checkpoint is given."""
    return TINY_AUDIO if variant in CPU_SIZED else BASE_AUDIO


SVD_VARIANTS: Mapping[str, SVDVariant] = MappingProxyType({v.name: v for v in (TINY, SVD)})


def get_svd_variant(name: str) -> SVDVariant:
    if name not in SVD_VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose one of {', '.join(SVD_VARIANTS)}")
    return SVD_VARIANTS[name]
