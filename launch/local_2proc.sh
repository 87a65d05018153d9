#!/usr/bin/env bash
# Two JAX processes on this machine (CPU, gloo collectives), one device each by default.
# Usage: launch/local_2proc.sh --config configs/train.py:stage=ethd,variant=tiny --workdir DIR [--config.x=y ...]
# Env: NUM_PROCESSES (2), PORT (free port picked), DEVICES_PER_PROCESS (1), PYTHON (python).
set -euo pipefail
N="${NUM_PROCESSES:-2}"
PY="${PYTHON:-python}"
PORT="${PORT:-$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
export JAX_PLATFORMS=cpu
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-1}"
export EMOTIVETALK_COORDINATOR="127.0.0.1:${PORT}" EMOTIVETALK_NUM_PROCESSES="$N"
pids=()
for ((i = 0; i < N; i++)); do
  EMOTIVETALK_PROCESS_ID="$i" "$PY" -m emotivetalk_jax.train.commands "$@" &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit "$rc"
