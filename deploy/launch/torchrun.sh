#!/usr/bin/env bash
# Continued pretraining with torchrun (DDP through the HF Trainer; add a ZeRO JSON with -s to use DeepSpeed).
#   single node : deploy/launch/torchrun.sh CONFIG.yaml [NPROC]
#   multi node  : build base+corpus once first (python -m domain_lm pipeline run CONFIG --until corpus), then
#                 NNODES=2 NODE_RANK=<0|1> MASTER_ADDR=<node0> deploy/launch/torchrun.sh CONFIG.yaml 8   (on every node)
set -euo pipefail
CONFIG=${1:?usage: $0 CONFIG.yaml [NPROC] [-s key=val ...]}
NPROC=${2:-2}
shift $(( $# < 2 ? $# : 2 ))
PY=${PYTHON:-python}
if [ "${NODE_RANK:-0}" = "0" ]; then $PY -m domain_lm pipeline run "$CONFIG" --until corpus "$@"; fi
exec $PY -m torch.distributed.run --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" \
  --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" --nproc_per_node "$NPROC" \
  -m domain_lm pretrain -c "$CONFIG" "$@"
