"""Stage 2's per-clip cache of frozen-model outputs (`data.frozen_cache`, `cfg.frozen_cache`):
the cached path feeds the step what the per-step path computes; the cache is reused, keyed
by the frozen parameters, and a damaged file is recomputed."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from emotivetalk_jax.data import frozen_cache
from emotivetalk_jax.data.audio_cache import source_features
from emotivetalk_jax.data.pipeline import SyntheticClips, clip_frames
from emotivetalk_jax.data.synthetic import SynthConfig


@pytest.fixture(scope="module")
def stage():
    from configs.train import get_config
    from emotivetalk_jax.train.stages import build_stage

    cfg = get_config("stage=ethd,variant=tiny")
    cfg.frozen_cache = True
    cfg.e_a_steps = 1  # e_a is compared too; one Di-CTE step compiles faster
    return build_stage(cfg)


@pytest.fixture(scope="module")
def source():  # clips of 3 to 6 frames: windows at both edges and, with F = 4, padded ones
    return SyntheticClips(0, "train", 3, SynthConfig(min_seconds=0.12, max_seconds=0.24))


def _outputs(stage, source, tmp_path, outputs=None):
    feats = source_features(stage.audio_encoder, source, cache_dir=tmp_path)
    return frozen_cache.source_outputs(outputs or stage.frozen_outputs, source, feats, clip_frames=clip_frames,
                                       cache_dir=tmp_path)


def test_cached_batch_gives_the_per_step_inputs(stage, source, tmp_path):
    """latents, l_a and e_v of a cached batch equal, to 1e-5, what `prepare` computes from the
    same batch's frames: rows of the training loader (make_dataset) and windows of short clips,
    one padded past the clip's end."""
    from configs.train import get_config
    from emotivetalk_jax.data.pipeline import ClipWindow
    from emotivetalk_jax.train.inputs import make_dataset

    d = stage.data
    feats = source_features(stage.audio_encoder, source)
    frozen = frozen_cache.source_outputs(stage.frozen_outputs, source, feats, clip_frames=clip_frames)
    window = ClipWindow(frames=d["frames"], size=d["size"], mask_sizes=d["mask_sizes"],
                        audio_context=d["audio_context"], features=feats, frozen=frozen)
    exs = [window.random_map(source[i], np.random.default_rng(s)) for s in range(3) for i in range(len(source))]
    padded = [ex for ex in exs if not ex["valid"].all()]
    assert padded  # some windows pad past a clip's end
    data = get_config("variant=tiny").data
    data.num_clips = 2
    loaded = next(iter(make_dataset(data, d, batch_size=2, seed=0, audio_encoder=stage.audio_encoder,
                                    frozen_outputs=stage.frozen_outputs, cache_dir=tmp_path)))
    assert {"frozen_latents", "frozen_e_v", "frozen_l_a"} <= set(loaded)
    assert not {"frames", "landmarks"} & set(loaded)  # the cached step renders no window pixels
    # the same loader without the cache draws the same windows: its frames are these rows' frames
    plain = next(iter(make_dataset(data, d, batch_size=2, seed=0, audio_encoder=stage.audio_encoder,
                                   cache_dir=tmp_path)))
    assert np.array_equal(plain["frame_features"], loaded["frame_features"])
    loaded["frames"] = plain["frames"]
    batch = {k: np.concatenate([v, np.stack([padded[0][k], exs[0][k]])]) for k, v in loaded.items()}
    prepare = jax.jit(lambda fs, b: stage.prepare(nnx.merge(stage.frozen_graphdef, fs), b, jax.random.key(0))["eb"])
    cached = prepare(stage.frozen_state, batch)
    fresh = prepare(stage.frozen_state, {k: v for k, v in batch.items() if not k.startswith("frozen_")})
    for name in ("latents", "lip_tokens", "e_v", "e_a", "ref_latent"):
        np.testing.assert_allclose(getattr(cached, name), getattr(fresh, name), atol=1e-5, rtol=1e-5, err_msg=name)


def test_cache_is_reused_keyed_by_frozen_params_and_recomputed_when_damaged(stage, source, tmp_path):
    from emotivetalk_jax.train.stages.ethd import frozen_outputs

    first = _outputs(stage, source, tmp_path)
    path = tmp_path / frozen_cache.CACHE_NAME
    stamp = path.stat().st_mtime_ns
    again = _outputs(stage, source, tmp_path)
    assert path.stat().st_mtime_ns == stamp  # loaded, not rewritten
    for a, b in zip(first, again):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    modules = nnx.merge(stage.frozen_graphdef, stage.frozen_state)  # one frozen parameter changes
    bias = modules.vaid.projector.proj_out.bias
    bias.value = bias.value + 1.0
    fgraph, fstate = nnx.split(modules)
    d = stage.data
    scaling = float(modules.vae.config.get("scaling_factor", 0.18215))
    other = frozen_outputs(fgraph, fstate.to_pure_dict(), modules, stage.audio_encoder, frames=d["frames"],
                           context=d["audio_context"], size=d["size"], scaling=scaling, compute_dtype="float32")
    assert other.digest != stage.frozen_outputs.digest
    changed = _outputs(stage, source, tmp_path, other)
    np.testing.assert_allclose(changed[0]["l_a"], first[0]["l_a"] + 1.0, atol=1e-5)  # recomputed
    np.testing.assert_array_equal(changed[0]["latents"], first[0]["latents"])
    path.write_bytes(b"not a zip")  # a damaged cache is recomputed, not trusted
    again = _outputs(stage, source, tmp_path, other)
    np.testing.assert_array_equal(again[1]["l_a"], changed[1]["l_a"])
    assert path.stat().st_size > 100
