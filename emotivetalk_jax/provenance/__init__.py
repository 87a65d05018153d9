"""Provenance: every video the project makes says, in three ways machines check, that it was generated.

1. a label: mp4 metadata (`label`): AI-generated, the tool and version, the checkpoint;
2. content credentials: a signed C2PA manifest (`credentials`) with the generated-content
   assertion; self-signed by a key the tool makes unless the user gives a certificate;
3. a watermark in the pixels (`watermark`): a faint keyed flicker found by correlation over
   the clip, which outlives re-encoding, scaling, cropping and trimming that drop 1 and 2.
`emotivetalk detect VIDEO...` (`detect`) reads all three. `--no-mark` (research runs) turns
them off. None of them stops a determined attacker: metadata is stripped by any re-mux, and
the watermark's key is public, so it can be estimated and subtracted with effort.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from emotivetalk_jax import __version__, validate
from emotivetalk_jax.provenance import label, watermark
from emotivetalk_jax.provenance.credentials import CredentialError, Identity, identity

NO_MARK_WARNING = ("--no-mark: this video carries no AI-generated label, content credential or watermark; "
                   "for research only, do not publish it")


def generation_record(checkpoint_sha256: str | None, created: str | None = None) -> dict:
    """What the label and the credential say about one video."""
    return {"ai_generated": True, "tool": label.TOOL, "version": __version__,
            "checkpoint_sha256": checkpoint_sha256 or "unknown", "created": created or label.now(),
            "watermark": watermark.KEY.decode()}


def write_marked(path: str | os.PathLike, frames: np.ndarray, fps: float, audio: np.ndarray | None, sr: int, *,
                 checkpoint_sha256: str | None, who: Identity | None = None) -> Path:
    """Write frames (already watermarked: `watermark.embed`) as an mp4 with the label, signed
    before it is renamed into place (`who`: the signing identity; default `identity()`, the
    environment's certificate or the tool's own key). A failure leaves no file at `path`."""
    from emotivetalk_jax.data.video import write_mp4
    from emotivetalk_jax.provenance.credentials import sign_mp4

    record = generation_record(checkpoint_sha256)
    who = who or identity()
    return write_mp4(path, frames, fps, audio, sr, metadata=label.make_label(checkpoint_sha256, record["created"]),
                     finish=lambda tmp: sign_mp4(tmp, record, who, title=Path(path).name))


def warn_unmarked() -> None:
    validate.warn(NO_MARK_WARNING)


__all__ = ["CredentialError", "Identity", "NO_MARK_WARNING", "generation_record", "identity", "label",
           "warn_unmarked", "watermark", "write_marked"]
