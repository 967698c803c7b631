#!/usr/bin/env bash
# Continued pretraining on one node with DeepSpeed (ZeRO-2 by default).
#   deploy/launch/deepspeed_single_node.sh CONFIG.yaml [NUM_PROCS] [ZERO_JSON] [extra -s key=val ...]
# Runs base + corpus single-process first (pipeline run --until corpus) (idempotent: reused when unchanged), then the training ranks.
# On a CPU-only host it works too (gloo backend, DS_ACCELERATOR=cpu); NUM_PROCS then means processes.
set -euo pipefail
CONFIG=${1:?usage: $0 CONFIG.yaml [NUM_PROCS] [ZERO_JSON] [-s key=val ...]}
NPROC=${2:-2}
ZERO=${3:-deploy/deepspeed/zero2.json}
shift $(( $# < 3 ? $# : 3 ))
PY=${PYTHON:-python}
$PY -m domain_lm pipeline run "$CONFIG" --until corpus "$@"
exec deepspeed --no_local_rank --num_gpus "$NPROC" --module domain_lm pretrain -c "$CONFIG" -s "pretrain.train.deepspeed=$ZERO" "$@"
