"""Training: the three stages as sharded jax.jit programs.

    from configs.train import get_config            # or commands.load_config("configs/train.py:stage=ethd")
    from emotivetalk_jax.train.loop import train
    train(get_config("stage=ethd,variant=tiny"), "/tmp/run")

CLI: `emotivetalk train --config configs/train.py:stage=ethd,variant=tiny --workdir DIR [--config.x=y ...]`
(`python -m emotivetalk_jax.train.commands ...` is the same). Modules: `stages` (one module per
stage, built by keyword), `gates` (the learning gates each stage logs), `state` (train state,
host init, remat, mixed precision), `optim` (Adam / AdamW / 8-bit Adam, schedules, clipping),
`inputs` (the global-order grain pipeline), `checkpoint` (orbax), `metrics` (jsonl +
TensorBoard + sample videos), `loop` (the loop), `commands` (CLI).
"""
