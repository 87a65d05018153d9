"""SVD UNet: JAX vs diffusers (PyTorch, CPU fp32), through `load_diffusers_unet`.

Each tiny diffusers model gets every parameter perturbed (SVD zero-inits output layers
and fixes mix factors, which would hide bugs), is saved with `save_pretrained`, loaded
through the converter and run on the same inputs.
"""

import numpy as np
import pytest

import diffusers
import torch

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from emotivetalk_jax.convert.engine import export_tensors  # noqa: E402
from emotivetalk_jax.convert.svd import SVD_RULES, load_diffusers_unet  # noqa: E402

pytestmark = pytest.mark.torch

_CROSS_DOWN, _DOWN = "CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"
_CROSS_UP, _UP = "CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal"

# name -> (diffusers config, B, frames, latent size, context tokens); each run uses 2 * B videos
CONFIGS = {
    "two_blocks": (
        dict(down_block_types=(_CROSS_DOWN, _DOWN), up_block_types=(_UP, _CROSS_UP), block_out_channels=(32, 64),
             addition_time_embed_dim=8, projection_class_embeddings_input_dim=24, layers_per_block=1,
             cross_attention_dim=32, num_attention_heads=(2, 4)),
        2, 4, 16, 3,
    ),
    "three_blocks": (
        dict(down_block_types=(_CROSS_DOWN, _CROSS_DOWN, _DOWN), up_block_types=(_UP, _CROSS_UP, _CROSS_UP),
             block_out_channels=(32, 32, 64), addition_time_embed_dim=4, projection_class_embeddings_input_dim=12,
             layers_per_block=2, cross_attention_dim=24, num_attention_heads=(1, 2, 2),
             transformer_layers_per_block=(1, 2, 2)),
        2, 3, 16, 2,
    ),
    # Odd latent size: exercises the forced upsample size; DownBlock in the middle.
    "four_blocks": (
        dict(in_channels=6, out_channels=3, down_block_types=(_CROSS_DOWN, _DOWN, _CROSS_DOWN, _DOWN),
             up_block_types=(_UP, _CROSS_UP, _UP, _CROSS_UP), block_out_channels=(32, 32, 64, 64),
             addition_time_embed_dim=6, projection_class_embeddings_input_dim=18, layers_per_block=(1, 2, 1, 1),
             cross_attention_dim=(16, 16, 16, 16), num_attention_heads=4),
        3, 2, 12, 4,
    ),
}


def _perturb(model: "torch.nn.Module", seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.5 if name.endswith("mix_factor") else 0.1
            p.add_(torch.randn(p.shape, generator=g) * scale)


def _torch_forward(unet, sample, timestep, context, added_time_ids, indicator):
    """diffusers' forward with an explicit image_only_indicator (diffusers hardwires zeros)."""
    b, f = sample.shape[:2]
    emb = unet.time_embedding(unet.time_proj(timestep.expand(b)).to(sample.dtype))
    aug = unet.add_embedding(unet.add_time_proj(added_time_ids.flatten()).reshape(b, -1))
    emb = (emb + aug).repeat_interleave(f, dim=0)
    context = context.repeat_interleave(f, dim=0)
    x = unet.conv_in(sample.flatten(0, 1))
    kw = dict(temb=emb, image_only_indicator=indicator)
    skips = (x,)
    for block in unet.down_blocks:
        extra = dict(encoder_hidden_states=context) if getattr(block, "has_cross_attention", False) else {}
        x, res = block(hidden_states=x, **kw, **extra)
        skips += res
    x = unet.mid_block(hidden_states=x, encoder_hidden_states=context, **kw)
    factor = 2 ** unet.num_upsamplers
    forward_size = any(s % factor for s in sample.shape[-2:])
    for i, block in enumerate(unet.up_blocks):
        n = len(block.resnets)
        res, skips = skips[-n:], skips[:-n]
        size = skips[-1].shape[2:] if forward_size and i < len(unet.up_blocks) - 1 else None
        extra = dict(encoder_hidden_states=context) if getattr(block, "has_cross_attention", False) else {}
        x = block(hidden_states=x, res_hidden_states_tuple=res, upsample_size=size, **kw, **extra)
    x = unet.conv_out(unet.conv_act(unet.conv_norm_out(x)))
    return x.reshape(b, f, *x.shape[1:])


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request, tmp_path_factory):
    """(name, torch model, loaded JAX model, torch inputs, torch output, JAX output).

    The batch holds 2 * B videos: the first B with an all-zeros image_only_indicator (plain
    video), the last B with a mixed one (some frames flagged as still images).
    """
    name = request.param
    cfg, b, f, size, tokens = CONFIGS[name]
    seed = sorted(CONFIGS).index(name)
    torch.manual_seed(seed)
    ref = diffusers.UNetSpatioTemporalConditionModel(sample_size=size, num_frames=f, **cfg).eval()
    _perturb(ref, seed)
    path = tmp_path_factory.mktemp(name)
    ref.save_pretrained(path, safe_serialization=True)
    model = load_diffusers_unet(path)

    g = torch.Generator().manual_seed(100 + seed)
    cin, dctx = ref.config.in_channels, ref.config.cross_attention_dim
    dctx = dctx if isinstance(dctx, int) else dctx[0]
    inputs = (
        torch.randn(2 * b, f, cin, size, size, generator=g),
        torch.rand(2 * b, generator=g) * 3.0 - 1.5,  # SVD's c_noise = 0.25 ln(sigma) range
        torch.randn(2 * b, tokens, dctx, generator=g),
        torch.stack([torch.randint(3, 30, (2 * b,), generator=g).float(),  # fps - 1
                     torch.randint(0, 256, (2 * b,), generator=g).float(),  # motion bucket
                     torch.rand(2 * b, generator=g) * 0.1], dim=1),  # noise augmentation
    )
    indicator = torch.zeros(2 * b, f)
    indicator[b, 0] = indicator[-1, -1] = 1.0
    with torch.no_grad():
        want = _torch_forward(ref, *inputs, indicator).numpy()
        all_video = ref(*inputs).sample.numpy()  # diffusers: indicator always zeros
    # The hand-written reference forward is itself checked against diffusers' own.
    np.testing.assert_allclose(want[:b], all_video[:b], atol=1e-6, rtol=0)
    got = _run_jax(model, inputs, indicator)
    return name, ref, model, inputs, want, got


def _run_jax(model, inputs, indicator, *, fast_compile=True):
    """The JAX UNet on torch inputs, returned in torch's (B, F, C, H, W) layout.

    fast_compile: compile with XLA's CPU backend optimisation off (compiling the unrolled
    UNet dominates this file's run time; the numerics are the same ops). Otherwise `nnx.jit`.
    """
    sample, timestep, context, added = (jnp.asarray(x.numpy()) for x in inputs)
    ind = None if indicator is None else jnp.asarray(indicator.numpy())
    args = (sample.transpose(0, 1, 3, 4, 2), timestep, context, added, ind)
    if fast_compile:
        graphdef, state = nnx.split(model)
        fn = jax.jit(lambda st, *a: nnx.merge(graphdef, st)(*a))
        out = fn.lower(state, *args).compile(compiler_options={"xla_backend_optimization_level": 0})(state, *args)
    else:
        out = nnx.jit(lambda m, *a: m(*a))(model, *args)
    return np.asarray(out).transpose(0, 1, 4, 2, 3)


def test_unet_matches_diffusers(case):
    name, _, _, inputs, want, got = case
    b = inputs[0].shape[0] // 2
    for part, rows in (("video", slice(None, b)), ("mixed_images", slice(b, None))):
        err = float(np.abs(got[rows] - want[rows]).max())
        scale = float(np.abs(want[rows]).mean())
        print(f"{name} {part}: max|jax-torch|={err:.2e} mean|torch|={scale:.3f}")
        assert 0.2 < scale < 5.0, f"output scale {scale} is not unit scale; the check would be meaningless"
        assert err <= 1e-4, f"{name} {part}: max error {err}"


@pytest.mark.parametrize("case", ["two_blocks"], indirect=True)  # each call compiles the whole UNet
def test_scalar_timestep_and_default_indicator(case):
    """A 0-d timestep broadcasts over the batch; image_only_indicator=None means all video."""
    name, ref, model, inputs, _, _ = case
    b = inputs[0].shape[0] // 2
    args = (inputs[0][:b], inputs[1][0], inputs[2][:b], inputs[3][:b])
    with torch.no_grad():
        want = ref(*args).sample.numpy()
    got = _run_jax(model, args, None)
    assert args[1].ndim == 0 and float(np.abs(got - want).max()) <= 1e-4


def test_export_round_trips_state_dict(case):
    _, ref, model, *_ = case
    want = {k: v.numpy() for k, v in ref.state_dict().items()}
    got = export_tensors(model, SVD_RULES)
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v), k
    assert model.config["down_block_types"] == tuple(ref.config.down_block_types)
