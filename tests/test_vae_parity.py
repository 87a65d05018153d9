"""SVD VAE parity against diffusers `AutoencoderKLTemporalDecoder`, through the converter.

Each case builds a tiny random diffusers VAE, perturbs every parameter (mix factors
included), saves it as safetensors, loads it with `load_diffusers_vae` and compares
encode (latent mean, logvar), decode(num_frames) on 2 videos x 3 frames and the full
forward, all under `nnx.jit`. Export must give back the exact state dict.
"""

import numpy as np
import pytest

import diffusers
import torch

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from emotivetalk_jax.convert.engine import export_tensors  # noqa: E402
from emotivetalk_jax.convert.svd import SVD_RULES, load_diffusers_vae  # noqa: E402
from emotivetalk_jax.models.vae import AutoencoderKLTemporalDecoder, resolve_config, sample_latent  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

TOL = 1e-4
VIDEOS, FRAMES, SIZE = 2, 3, 32

CONFIGS = {
    # REFERENCE.md section 6: two levels, one layer per block (the mid block's
    # second spatio-temporal resnet and its attention exist but never run).
    "two_levels": dict(down_block_types=("DownEncoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1),
    # Three levels, two layers per block: attention runs in the decoder mid block.
    "three_levels": dict(
        down_block_types=("DownEncoderBlock2D",) * 3, block_out_channels=(32, 32, 64), layers_per_block=2
    ),
}


def _nhwc(t):
    return jnp.asarray(t.permute(0, 2, 3, 1).numpy())


def _nchw(a):
    return np.asarray(a).transpose(0, 3, 1, 2)


def _close(ours, ref, what):
    ref = np.asarray(ref)
    assert 0.2 < ref.std() < 5.0, f"{what}: reference scale {ref.std():.3g} is not about 1; the check would be weak"
    err = float(np.abs(_nchw(ours) - ref).max())
    assert err <= TOL, f"{what}: max |jax - torch| = {err:.3g} > {TOL}"


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLTemporalDecoder(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=SIZE, **CONFIGS[request.param]
    ).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            # Mix factors start at 0 (alpha 0.5): move them well away from it.
            p.add_(torch.randn_like(p) * (0.8 if name.endswith("mix_factor") else 0.05))
    path = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(path, safe_serialization=True)
    return ref, load_diffusers_vae(path)


def test_config_resolved(pair):
    ref, model = pair
    assert model.config == resolve_config(dict(ref.config))
    assert model.config["scaling_factor"] == pytest.approx(0.18215)


def test_encode(pair):
    ref, model = pair
    x = torch.randn(VIDEOS * FRAMES, 3, SIZE, SIZE)
    with torch.no_grad():
        dist = ref.encode(x).latent_dist
    mean, logvar = nnx.jit(lambda m, x: m.encode(x))(model, _nhwc(x))
    _close(mean, dist.mean.numpy(), "latent mean")
    _close(logvar, dist.logvar.numpy(), "latent logvar")
    # Sampling: same distribution parameters, N(mean, exp(logvar)) draws.
    z = sample_latent(mean, logvar, jax.random.key(0))
    assert z.shape == mean.shape and not np.allclose(z, mean)


def test_decode_videos(pair):
    ref, model = pair
    latent = SIZE // 2 ** (len(model.config["block_out_channels"]) - 1)
    z = torch.randn(VIDEOS * FRAMES, 4, latent, latent)
    with torch.no_grad():
        want = ref.decode(z, num_frames=FRAMES).sample.numpy()
    decode = nnx.jit(lambda m, z: m.decode(z, FRAMES))
    got = decode(model, _nhwc(z))
    assert got.shape == (VIDEOS * FRAMES, SIZE, SIZE, 3)
    _close(got, want, "decoded frames")
    # The temporal layers see one video at a time: zeroing video 1 leaves video 0 alone.
    other = decode(model, _nhwc(z).at[FRAMES:].set(0.0))
    np.testing.assert_allclose(np.asarray(other[:FRAMES]), np.asarray(got[:FRAMES]), rtol=0, atol=1e-6)
    assert np.abs(np.asarray(other[FRAMES:] - got[FRAMES:])).max() > 0.1


@pytest.mark.parametrize("pair", ["two_levels"], indirect=True)  # compiling both halves again costs time
def test_forward(pair):
    ref, model = pair
    x = torch.randn(VIDEOS * FRAMES, 3, SIZE, SIZE)
    with torch.no_grad():
        want = ref(x, num_frames=FRAMES).sample.numpy()
    _close(nnx.jit(lambda m, x: m(x, FRAMES))(model, _nhwc(x)), want, "forward (posterior mode)")


def test_export_is_exact(pair):
    ref, model = pair
    want = {k: v.numpy() for k, v in ref.state_dict().items()}
    got = export_tensors(model, SVD_RULES)
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].shape == v.shape and np.array_equal(got[k], v), k


def test_group_norms_match(pair):
    """eps differences (1e-6 vs 1e-5) hide below the parity tolerance, so compare them."""
    ref, model = pair
    norms = [(n, m) for n, m in ref.named_modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms
    for name, norm in norms:
        ours = model
        for part in name.split("."):
            ours = ours[int(part)] if part.isdigit() else getattr(ours, part)
        assert (ours.epsilon, ours.num_groups) == (norm.eps, norm.num_groups), name


def _abstract(cfg):
    return nnx.eval_shape(lambda: AutoencoderKLTemporalDecoder.from_diffusers_config(cfg, rngs=nnx.Rngs(0)))


def test_config_errors():
    base = dict(down_block_types=["DownEncoderBlock2D"] * 2, block_out_channels=[32, 64])
    for bad, match in [
        ({"down_block_types": ["AttnDownEncoderBlock2D"] * 2}, "not supported"),
        ({"block_out_channels": [32, 48]}, "divide by norm_num_groups=32"),
        ({"block_out_channels": [32, 64], "norm_num_groups": 24}, "divide by norm_num_groups=24"),
        ({"norm_num_groups": 0}, "divide by norm_num_groups=0"),
        ({"block_out_channels": [32]}, "same non-zero length"),
        ({"use_post_quant_conv": True}, "unknown"),
    ]:
        with pytest.raises(ValueError, match=match):
            _abstract({**base, **bad})
    # Keys starting with "_" are metadata, and missing keys take diffusers' defaults.
    cfg = _abstract({**base, "_class_name": "AutoencoderKLTemporalDecoder"}).config
    assert cfg["layers_per_block"] == 1 and cfg["latent_channels"] == 4 and "_class_name" not in cfg
    assert cfg["norm_num_groups"] == 32  # SVD's, when the config does not say


def test_norm_num_groups_reaches_every_group_norm():
    model = _abstract(dict(down_block_types=["DownEncoderBlock2D"] * 2, block_out_channels=[32, 64], norm_num_groups=8))
    norms = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.GroupNorm)]
    assert len(norms) > 10 and {m.num_groups for m in norms} == {8}
