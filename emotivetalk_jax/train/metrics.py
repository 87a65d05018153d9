"""Training logs: `WORKDIR/metrics.jsonl` (one JSON object per logged step, with `step` and
`loss`), TensorBoard scalars (tensorboardX, when installed) and stage-2 sample videos.
Only process 0 writes."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def drop_rows_after(path: Path, step: int) -> int:
    """Rewrite the jsonl log at `path` without rows whose step is above `step` (atomically:
    a temporary file renamed over it). Returns how many rows were dropped."""
    if not path.exists():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    keep = [l for l in lines if not l.strip() or json.loads(l).get("step", 0) <= step]
    if len(keep) == len(lines):
        return 0
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)
    log.info("%s: dropped %d rows logged after step %d (the run resumes from there)", path, len(lines) - len(keep), step)
    return len(lines) - len(keep)


class MetricsWriter:
    def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True,
                 resume_step: int | None = None):
        """`resume_step`: the step the run restarts from. Rows logged after it (by the run that
        was interrupted after its last checkpoint) are dropped: that trajectory was discarded,
        and readers of the log (e.g. the VAE scaling factor) must see only the one that counts."""
        self.workdir = Path(workdir)
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            drop_rows_after(self.workdir / "metrics.jsonl", resume_step)
        self._jsonl = open(self.workdir / "metrics.jsonl", "a")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
            except ImportError:
                log.warning("tensorboardX is not installed: TensorBoard logs are off (metrics.jsonl still written)")

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step":
                    self._tb.add_scalar(k, v, int(step))

    def write_video(self, step: int, frames: np.ndarray, audio: np.ndarray | None = None, fps: float = 25.0) -> Path | None:
        """frames (F, S, S, 3) in [-1, 1] -> WORKDIR/samples/step_<step>.mp4 (and a TB image of frame 0)."""
        if not self.enabled:
            return None
        from emotivetalk_jax.data.video import write_mp4

        u8 = np.clip((np.asarray(frames, np.float32) + 1) * 127.5, 0, 255).astype(np.uint8)
        path = self.workdir / "samples" / f"step_{int(step):08d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_mp4(path, u8, fps=fps, audio=audio)
        except Exception as e:  # a missing encoder must not stop training
            log.warning("could not write sample video %s: %s", path, e)
            np.save(path.with_suffix(".npy"), u8)
        if self._tb is not None:
            self._tb.add_image("sample/frame0", u8[0], int(step), dataformats="HWC")
        return path

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()
