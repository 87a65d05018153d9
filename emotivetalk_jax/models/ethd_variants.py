"""Typed configs of the ETHD backbone (3.3) and its variants `tiny`, `demo`,
`emotivetalk_512`, `emotivetalk_1024`.

An ETHD variant is an SVD variant (the UNet and VAE in diffusers' config vocabulary,
`models.variants`) plus the EmotiveTalk additions (`ETHDConfig`), the training recipe
(6.4) and the inference windows (3.4, 6.4). The paper fixes: resolution and frames per
training clip (512 x 120, 1024 x 32), window / overlap at inference (120 / 24, 32 / 12),
25 DDIM steps, P(e_dri = e_v) = 0.6, Adam8bit lr 1e-5 batch 1. It gives no widths of the
additions. Where it is silent we took (and say so):
- lip tokens: V-AID's l_a, one 512-wide token per frame (`vaid_variants.PerceiverConfig`),
  projected by one learned linear into `lip_context_tokens` = 4 tokens of the UNet's
  context width (1024) and fed to SVD's attn2 (spatial: the frame's own tokens; temporal:
  the mean over the clip's frames). More than one token, because attention to a single
  key ignores its query (SVD's one CLIP token leaves attn2's to_q / to_k / norm2 untrained);
- expression latents e (30 wide, PD-FGC's emo_embed) are expanded by one shared linear +
  LayerNorm into `expr_tokens` = 4 tokens of width `expr_context_dim` = 128, so the
  EDI cross-attention has more than one key (with one key softmax is 1 and the attention
  is a spatially constant linear map); the temporal branch attends to the tokens of all
  frames, each with a sinusoidal frame position added;
- every spatial / temporal transformer block gets EDI / temporal expression attention.
  With these widths the backbone counts 1.583G parameters (`emotivetalk info`), matching
  the paper's 1.58G;
- noise levels for training: log sigma ~ N(0.7, 1.6^2) (`p_mean`, `p_std`), the shifted
  log-normal that SVD fine-tuning uses at high resolution (SVD paper, App. D; SVD-Xtend),
  with EDM's weight (s^2 + 1) / s^2 on the x0 error.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Mapping

from emotivetalk_jax.models.variants import SVD, SVDVariant
from emotivetalk_jax.models.variants import TINY as SVD_TINY


@dataclasses.dataclass(frozen=True)
class ETHDConfig:
    """The EmotiveTalk additions to the SVD UNet (3.3)."""

    lip_dim: int = 512  # Dl: width of V-AID's l_a (= PerceiverConfig.out_dim)
    lip_tokens: int = 1  # L: lip tokens per frame (PerceiverConfig.num_queries)
    lip_context_tokens: int = 4  # Nl: context tokens each lip token expands into (lip_proj)
    expr_dim: int = 30  # De: width of e_v / e_a / e_ref (= FaceEncoderConfig.expr_dim)
    expr_tokens: int = 4  # Nt: context tokens each expression latent expands into
    expr_context_dim: int = 128  # Dx: their width (keys / values of EDI and temporal expr attn)
    edi: bool = True  # spatial blocks get EDI (eq. 9-10)
    temporal_expr: bool = True  # temporal blocks get cross-attention to e_dri
    temporal_expr_positions: bool = True  # add a sinusoidal frame position to the temporal context
    # Beyond the paper (issue 30): a per-frame head-pose condition, maps of the pose through a
    # zero-initialised conv net added after conv_in (`models.pose_guider`); off in every variant
    # (stage 2's `pose_condition` turns it on for a run).
    pose: bool = False
    pose_hidden: int = 32  # K: the pose guider's hidden width


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Stage-2 recipe (3.4, 6.4)."""

    frames: int = 120  # frames per training clip
    p_video_expr: float = 0.6  # P(e_dri = e_v); else e_a
    p_mean: float = 0.7  # log sigma ~ N(p_mean, p_std^2)
    p_std: float = 1.6
    lr: float = 1e-5
    batch_size: int = 1
    optimizer: str = "adam8bit"
    train_backbone: bool = True  # the paper fine-tunes SVD's weights together with the additions


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """Windowed DDIM sampling (3.4, 6.4)."""

    window: int = 120
    overlap: int = 24
    steps: int = 25
    fps: int = 25
    motion_bucket_id: int = 127
    noise_aug: float = 0.02
    # Classifier-free guidance with two branches (conditioned, and lip + expression dropped), one
    # scale for both: the paper's cost tables count multiply-accumulates, so its 3,668 TMAC for
    # a 4.8 s clip is two UNet forwards per frame and step (REFERENCE.md 9). The paper gives no
    # scale; 2.0 is our choice. 1.0 turns guidance off (one branch, half the compute).
    guidance_scale: float = 2.0
    # Frames per VAE decode call. SVD's temporal decoder mixes frames, so decode in chunks as
    # long as it was trained on: the demo's VAE (trained on 2-frame clips) reconstructed the
    # held-out ground truth at 20.3 dB in chunks of 16 and 26.2 dB in chunks of 2, and the
    # mouth opening read back from it at r 0.41 against 0.95.
    decode_chunk: int = 16


@dataclasses.dataclass(frozen=True)
class ETHDVariant:
    name: str
    resolution: int  # pixels; the latent is resolution / 8
    svd: SVDVariant  # UNet + VAE in diffusers config vocabulary
    ethd: ETHDConfig
    train: TrainConfig = TrainConfig()
    inference: InferenceConfig = InferenceConfig()

    def override(self, name: str, *, resolution: int | None = None, unet: Mapping = {}, vae: Mapping = {},
                 **parts: Mapping) -> "ETHDVariant":
        """A new variant: `unet` / `vae` change diffusers config keys; `parts` maps ethd / train /
        inference to changed fields."""
        new = {k: dataclasses.replace(getattr(self, k), **v) for k, v in parts.items()}
        return dataclasses.replace(
            self, name=name, resolution=resolution or self.resolution,
            svd=self.svd.override(name, unet=unet, vae=vae), **new,
        )

    @property
    def vae_factor(self) -> int:
        """Pixels per latent cell: 2 ** (VAE levels - 1) (8 for SVD's VAE)."""
        return 2 ** (len(self.svd.vae["block_out_channels"]) - 1)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae_factor


EMOTIVETALK_512 = ETHDVariant(
    "emotivetalk_512", 512, SVD.override("emotivetalk_512", unet=dict(sample_size=64, num_frames=120)), ETHDConfig()
)
EMOTIVETALK_1024 = EMOTIVETALK_512.override(
    "emotivetalk_1024", resolution=1024, unet=dict(sample_size=128, num_frames=32),
    train=dict(frames=32), inference=dict(window=32, overlap=12),
)
# The tiny SVD UNet (2 levels, 32/64 channels) with V-AID tiny's widths (lip 16, expression 8).
TINY = ETHDVariant(
    "tiny", 64, SVD_TINY.override("tiny", unet=dict(sample_size=8, num_frames=4)),
    ETHDConfig(lip_dim=16, lip_context_tokens=2, expr_dim=8, expr_tokens=2, expr_context_dim=16),
    TrainConfig(frames=4), InferenceConfig(window=4, overlap=2, steps=4, guidance_scale=1.0),  # tests: one branch
)

# The embedded demo checkpoint (`emotivetalk_jax/assets/demo`, trained on the synthetic domain
# by `launch/train_demo.sh`): tiny's V-AID and additions at 64 px, a UNet of 32 / 96 channels
# and a 3-level VAE (factor 4, latent 16 x 16), so that 1500 frames sample in minutes on a CPU
# and the whole bundle stays under 25 MB. The VAE's GroupNorm uses 8 groups, not SVD's 32:
# with 32 channels, 32 groups normalise each channel on its own and wash out flat colours
# (measured: 18.4 vs 14.6 dB validation PSNR after 100 steps from scratch).
DEMO = TINY.override(
    "demo",
    unet=dict(sample_size=16, block_out_channels=(32, 96), num_frames=6),
    vae=dict(down_block_types=("DownEncoderBlock2D",) * 3, block_out_channels=(32, 64, 64), sample_size=64,
             norm_num_groups=8),
    train=dict(frames=6), inference=dict(window=6, overlap=2, steps=8, decode_chunk=2),
)

ETHD_VARIANTS: Mapping[str, ETHDVariant] = MappingProxyType(
    {v.name: v for v in (TINY, DEMO, EMOTIVETALK_512, EMOTIVETALK_1024)}
)


def get_ethd_variant(name: str) -> ETHDVariant:
    if name not in ETHD_VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose one of {', '.join(ETHD_VARIANTS)}")
    return ETHD_VARIANTS[name]
