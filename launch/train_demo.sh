#!/usr/bin/env bash
# The embedded demo checkpoint, end to end, with the project's own training command:
# the `demo` variant trained on the synthetic domain (no downloads), then bundled.
#
#   launch/train_demo.sh [WORKDIR] [OUT]      (defaults: /tmp/emotivetalk_demo, emotivetalk_jax/assets/demo)
#
# Stages: vae (SVD's temporal VAE as an autoencoder) and encoders (stage 0) run side by side,
# then vaid (stage 1) on the trained face encoders, then ethd (stage 2) on all of them, then
# `emotivetalk export-bundle`. Each stage resumes from its workdir, so rerunning continues.
# Step counts: env VAE_STEPS, ENC_STEPS, VAID_STEPS, ETHD_STEPS. Threads: each stage uses
# the whole machine; the first two share it.
#
# Status (2-core CPU, 2026-11-21): encoders (1200 steps, loss 0.0315) and vaid (700 steps at
# lr 3e-4; Di-CTE loss 0.005, lip 3.2, CLUB ~0) train stably in about 10 min each. The VAE
# is the bottleneck: with 8 GroupNorm groups (the demo variant's) and lr 1e-3 it reaches about
# 23 dB training PSNR after 900 steps (~1.5-2.5 s/step); stage 2 needs it well above 30 dB.
# No demo has been trained through stage 2 yet.
set -euo pipefail
W="${1:-/tmp/emotivetalk_demo}"
OUT="${2:-emotivetalk_jax/assets/demo}"
ET="${EMOTIVETALK:-emotivetalk}"
COMMON=(--config.data.num_clips=512 --config.checkpoint.every=500 --config.log_every=25)
mkdir -p "$W"

"$ET" train --config configs/train.py:stage=vae,variant=demo --workdir "$W/vae" "${COMMON[@]}" \
  --config.total_steps="${VAE_STEPS:-6000}" --config.batch_size=4 --config.frames=2 --config.optim.lr=1e-3 \
  --config.optim.schedule=cosine --config.optim.warmup_steps=50 > "$W/vae.log" 2>&1 &
vae=$!
"$ET" train --config configs/train.py:stage=encoders,variant=demo --workdir "$W/encoders" "${COMMON[@]}" \
  --config.total_steps="${ENC_STEPS:-1200}" --config.batch_size=16 --config.optim.lr=1e-3 \
  --config.optim.schedule=cosine --config.optim.warmup_steps=50 > "$W/encoders.log" 2>&1
wait "$vae"

"$ET" train --config configs/train.py:stage=vaid,variant=demo --workdir "$W/vaid" "${COMMON[@]}" \
  --config.total_steps="${VAID_STEPS:-700}" --config.batch_size=8 --config.optim.lr=3e-4 \
  --config.optim.schedule=cosine --config.optim.warmup_steps=50 \
  --config.init.face_encoders="$W/encoders" > "$W/vaid.log" 2>&1

"$ET" train --config configs/train.py:stage=ethd,variant=demo --workdir "$W/ethd" "${COMMON[@]}" \
  --config.total_steps="${ETHD_STEPS:-6000}" --config.batch_size=4 --config.image_size=64 --config.optim.name=adam \
  --config.optim.lr=3e-4 --config.optim.schedule=cosine --config.optim.warmup_steps=100 \
  --config.init.face_encoders="$W/encoders" --config.init.vaid="$W/vaid" --config.init.vae="$W/vae" \
  > "$W/ethd.log" 2>&1

"$ET" export-bundle "$W/ethd" "$OUT"
du -sh "$OUT"
