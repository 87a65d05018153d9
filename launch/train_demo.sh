#!/usr/bin/env bash
# The embedded demo checkpoint, end to end, with the project's own training command:
# the `demo` variant trained on the synthetic domain (no downloads), then bundled.
#
#   launch/train_demo.sh [WORKDIR] [OUT]      (defaults: /tmp/emotivetalk_demo, emotivetalk_jax/assets/demo)
#
# Stages: vae (SVD's temporal VAE as an autoencoder) and encoders (stage 0) run side by side;
# then audio (the demo's wav2vec2 learns to hear lips: lip loss against stage 0's l_v, the
# stand-in for a pretrained wav2vec2); then vaid (stage 1) on the trained face and audio
# encoders; then ethd (stage 2) on all of them next to vae_dec, a decoder-only fine-tune of
# the VAE (`vae_train=decoder`: the encoder, and so every latent stage 2 learns on, stays
# bit-identical), then `emotivetalk export-bundle --vae vae_dec`. Each stage resumes from its
# workdir, so rerunning continues. Step counts: env VAE_STEPS, ENC_STEPS, AUDIO_STEPS,
# VAID_STEPS, ETHD_STEPS, DEC_STEPS. Stages that run side by side share the machine; vae_dec
# runs at the lowest priority.
#
# Gates: the encoders, audio and vaid stages log their learning gates (eval/probes.py) at every
# checkpoint; the script stops when a stage's last gates miss their bars
# (`python -m emotivetalk_jax.eval.probes --check WORKDIR`), before the next, longer stage.
#
# The demo's domain and choices (the paper is silent on each; configs/train.py says why): no
# head motion (no input predicts it; with it, stage 0's e_v learned pose); the neutral portrait
# as the reference of stage 0 (with another frame of the same clip, whose emotion is the
# driving frame's, the renderer needs no expression latent: e_v accuracy 0.08 at step 250,
# chance 0.125) and of stage 1 (users give one), and half the time in stage 2; lip-box x0
# error weighted 4x; EMA 0.999 exported.
#
# Measured on the 2-core CPU (2026-11-27, shared with test runs, so slower than alone), gates
# on 16 held-out clips (eval/probes.py; bars: l_v r >= 0.95, e_v accuracy >= 0.95,
# l_a r >= 0.90):
#   encoders  2400 steps (1200 with head motion 0.25, then 1200 without; non-residual
#             renderer): l_v r 0.84, e_v accuracy 0.19 - both bars missed. The residual
#             renderer (now the demo's) reached l_v r 0.78 at step 750 against 0.66.
#   audio     250 steps: a_w r 0.981 (the random encoder: 0.32-0.66 by the probe).
# Stage 2 has not been run with this recipe.
set -euo pipefail
W="${1:-/tmp/emotivetalk_demo}"
OUT="${2:-emotivetalk_jax/assets/demo}"
ET="${EMOTIVETALK:-emotivetalk}"
COMMON=(--config.data.num_clips=512 --config.checkpoint.every=250 --config.log_every=25 --config.data.head_motion=0)
GATE=(python -m emotivetalk_jax.eval.probes --check)
mkdir -p "$W"

"$ET" train --config configs/train.py:stage=vae,variant=demo --workdir "$W/vae" "${COMMON[@]}" \
  --config.total_steps="${VAE_STEPS:-1500}" --config.batch_size=4 --config.frames=2 --config.optim.lr=1e-3 \
  --config.optim.schedule=cosine --config.optim.warmup_steps=50 > "$W/vae.log" 2>&1 &
vae=$!
"$ET" train --config configs/train.py:stage=encoders,variant=demo --workdir "$W/encoders" "${COMMON[@]}" \
  --config.total_steps="${ENC_STEPS:-1200}" --config.batch_size=16 --config.optim.lr=1e-3 --config.data.reference_neutral=1 \
  --config.optim.schedule=cosine --config.optim.warmup_steps=50 > "$W/encoders.log" 2>&1
wait "$vae"
"${GATE[@]}" "$W/encoders"

"$ET" train --config configs/train.py:stage=audio,variant=demo --workdir "$W/audio" "${COMMON[@]}" \
  --config.total_steps="${AUDIO_STEPS:-500}" --config.batch_size=16 --config.optim.lr=1e-3 \
  --config.optim.schedule=cosine --config.optim.warmup_steps=50 \
  --config.init.face_encoders="$W/encoders" > "$W/audio.log" 2>&1
"${GATE[@]}" "$W/audio"

"$ET" train --config configs/train.py:stage=vaid,variant=demo --workdir "$W/vaid" "${COMMON[@]}" \
  --config.total_steps="${VAID_STEPS:-700}" --config.batch_size=8 --config.optim.lr=3e-4 \
  --config.optim.schedule=cosine --config.optim.warmup_steps=50 \
  --config.init.face_encoders="$W/encoders" --config.init.audio="$W/audio" --config.data.reference_neutral=1 \
  > "$W/vaid.log" 2>&1
"${GATE[@]}" "$W/vaid"

nice -n 19 "$ET" train --config configs/train.py:stage=vae,variant=demo --workdir "$W/vae_dec" "${COMMON[@]}" \
  --config.total_steps="${DEC_STEPS:-1500}" --config.batch_size=4 --config.frames=2 --config.optim.lr=5e-4 \
  --config.optim.schedule=cosine --config.optim.warmup_steps=20 --config.vae_train=decoder \
  --config.init.vae="$W/vae" --config.seed=1 > "$W/vae_dec.log" 2>&1 &
dec=$!
"$ET" train --config configs/train.py:stage=ethd,variant=demo --workdir "$W/ethd" "${COMMON[@]}" \
  --config.total_steps="${ETHD_STEPS:-3000}" --config.batch_size=4 --config.image_size=64 --config.optim.name=adam \
  --config.optim.lr=3e-4 --config.optim.schedule=cosine --config.optim.warmup_steps=100 \
  --config.init.face_encoders="$W/encoders" --config.init.vaid="$W/vaid" --config.init.vae="$W/vae" \
  --config.init.audio="$W/audio" --config.data.reference_neutral=0.5 --config.lip_loss_weight=4 \
  --config.ema_decay=0.999 > "$W/ethd.log" 2>&1

kill -TERM "$dec" 2>/dev/null || true  # saves its step; a decoder fine-tune can stop anywhere
wait "$dec" || true
"$ET" export-bundle "$W/ethd" "$OUT" --vae "$W/vae_dec"
du -sh "$OUT"
