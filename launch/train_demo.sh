#!/usr/bin/env bash
# The embedded demo checkpoint, end to end, with the project's own training command:
# the `demo` variant trained on the synthetic domain (no downloads), then bundled.
#
#   launch/train_demo.sh [WORKDIR] [OUT]      (defaults: /tmp/emotivetalk_demo, emotivetalk_jax/assets/demo)
#
# Stages: vae (SVD's temporal VAE as an autoencoder) and encoders (stage 0) run side by side,
# then vaid (stage 1) on the trained face encoders, then ethd (stage 2) on all of them next to
# vae_dec, a decoder-only fine-tune of the VAE (`vae_train=decoder`: the encoder, and so every
# latent stage 2 learns on, stays bit-identical, while reconstructions keep sharpening), then
# `emotivetalk export-bundle --vae vae_dec`. Each stage resumes from its workdir, so rerunning
# continues. Step counts: env VAE_STEPS, ENC_STEPS, VAID_STEPS, ETHD_STEPS, DEC_STEPS. Stages
# that run side by side share the machine; vae_dec runs at the lowest priority.
#
# Measured on a 2-core CPU (2026-11-21): encoders (1200 steps) and vaid (700 steps) about
# 10 min each; the VAE 1.5-2.5 s/step (26.1 dB held-out PSNR at 1500 steps; the decoder-only
# fine-tune 27.8 dB at 100 steps, 28.4 dB at 349); stage 2 1.4 s/step alone, about 2 s next
# to the fine-tune. Stage 2 stopped at step 2009 of 3000 is not yet usable (bench-synthetic,
# 8 clips: lip_sync_corr 0.03, emotion_accuracy 0.375, identity_psnr 20.3 dB).
set -euo pipefail
W="${1:-/tmp/emotivetalk_demo}"
OUT="${2:-emotivetalk_jax/assets/demo}"
ET="${EMOTIVETALK:-emotivetalk}"
COMMON=(--config.data.num_clips=512 --config.checkpoint.every=250 --config.log_every=25)
mkdir -p "$W"

"$ET" train --config configs/train.py:stage=vae,variant=demo --workdir "$W/vae" "${COMMON[@]}" \
  --config.total_steps="${VAE_STEPS:-1500}" --config.batch_size=4 --config.frames=2 --config.optim.lr=1e-3 \
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

nice -n 19 "$ET" train --config configs/train.py:stage=vae,variant=demo --workdir "$W/vae_dec" "${COMMON[@]}" \
  --config.total_steps="${DEC_STEPS:-1500}" --config.batch_size=4 --config.frames=2 --config.optim.lr=5e-4 \
  --config.optim.schedule=cosine --config.optim.warmup_steps=20 --config.vae_train=decoder \
  --config.init.vae="$W/vae" --config.seed=1 > "$W/vae_dec.log" 2>&1 &
dec=$!
"$ET" train --config configs/train.py:stage=ethd,variant=demo --workdir "$W/ethd" "${COMMON[@]}" \
  --config.total_steps="${ETHD_STEPS:-3000}" --config.batch_size=4 --config.image_size=64 --config.optim.name=adam \
  --config.optim.lr=3e-4 --config.optim.schedule=cosine --config.optim.warmup_steps=100 \
  --config.init.face_encoders="$W/encoders" --config.init.vaid="$W/vaid" --config.init.vae="$W/vae" \
  > "$W/ethd.log" 2>&1

kill -TERM "$dec" 2>/dev/null || true  # saves its step; a decoder fine-tune can stop anywhere
wait "$dec" || true
"$ET" export-bundle "$W/ethd" "$OUT" --vae "$W/vae_dec"
du -sh "$OUT"
