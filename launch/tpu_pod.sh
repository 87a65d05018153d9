#!/usr/bin/env bash
# Train on a TPU VM pod slice: runs the same command on every worker; jax.distributed
# finds the coordinator, process count and ids from the TPU metadata.
# Usage: launch/tpu_pod.sh TPU_NAME ZONE --config configs/train.py:stage=ethd,variant=emotivetalk_512 \
#          --workdir gs://BUCKET/run [--config.mesh="[('data',-1),('fsdp',8),('tensor',1)]"]
# The repository must be checked out at the same path on every worker (e.g. by a startup script),
# with `pip install -e .[tpu]` done. SIGTERM on preemption -> each worker saves and exits; rerun
# the same command to resume from the latest checkpoint.
set -euo pipefail
TPU="$1"; ZONE="$2"; shift 2
REPO="${REPO:-~/emotivetalk_jax}"
ARGS=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  cd $REPO && EMOTIVETALK_DISTRIBUTED=1 python -m emotivetalk_jax.train.commands $ARGS 2>&1 | tee -a train_\$(hostname).log"
