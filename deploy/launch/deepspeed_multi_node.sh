#!/usr/bin/env bash
# Continued pretraining across nodes with DeepSpeed, from the first node of HOSTFILE.
#   deploy/launch/deepspeed_multi_node.sh CONFIG.yaml HOSTFILE [ZERO_JSON] [extra -s key=val ...]
# The run directory (run.output_dir) and the model store must be on storage every node sees
# (NFS/Lustre), because ranks other than 0 read the base and corpus stages from it.
set -euo pipefail
CONFIG=${1:?usage: $0 CONFIG.yaml HOSTFILE [ZERO_JSON] [-s key=val ...]}
HOSTFILE=${2:?hostfile (see deploy/launch/hostfile.example)}
ZERO=${3:-deploy/deepspeed/zero3.json}
shift $(( $# < 3 ? $# : 3 ))
PY=${PYTHON:-python}
MASTER_ADDR=${MASTER_ADDR:-$(head -n1 "$HOSTFILE" | grep -v '^#' | awk '{print $1}' || true)}
$PY -m domain_lm pipeline run "$CONFIG" --until corpus "$@"
exec deepspeed --hostfile "$HOSTFILE" ${MASTER_ADDR:+--master_addr "$MASTER_ADDR"} --no_local_rank \
  --module domain_lm pretrain -c "$CONFIG" -s "pretrain.train.deepspeed=$ZERO" "$@"
