"""A pipeline checkpoint written by older code (tests/fixtures/bundle_v0, see its README) still loads."""

from pathlib import Path

import numpy as np
from flax import nnx

from emotivetalk_jax.bundle import load_bundle

FIXTURE = Path(__file__).parent / "fixtures" / "bundle_v0"
OFFSETS = {"ethd": 0, "vae": 1, "audio": 2, "vaid": 3, "face_encoders": 4}


def test_bundle_written_by_older_code_loads():
    b = load_bundle(FIXTURE, variant="tiny", resolution=32, verify=True)
    s = b.settings
    assert (s.variant, s.vaid_variant, s.resolution, s.window, s.overlap, s.steps, s.dicte_steps,
            s.decode_chunk) == ("tiny", "tiny", 32, 16, 4, 2, 2, 16)
    for part, offset in OFFSETS.items():
        flat = nnx.to_flat_state(nnx.state(getattr(b, part)))
        assert len(flat) > 0
        for i, (path, var) in enumerate(flat):
            value = np.asarray(var.value)
            assert value.dtype == np.float32, (part, path)
            np.testing.assert_array_equal(value, np.float32(((i + offset) % 97) / 97), err_msg=f"{part} {path}")
    assert np.shape(b.codebook.means) == (8, b.ethd.ethd_config.expr_dim)
    assert b.speech_head is None
