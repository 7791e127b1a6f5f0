# Sourced by the bash half of every launch_scripts/pretrain_*.sh: starts one rank per device on
# this node with torchrun, or on every host of $HOSTFILE with the deepspeed launcher, each rank
# running the calling script with python. Callers set NPROC_DEFAULT and THREADS_DEFAULT first.
set -euo pipefail
cd "$(dirname "$0")/.."
SCRIPT="launch_scripts/$(basename "$0")"
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
NPROC_PER_NODE=${NPROC_PER_NODE:-${GPUS_PER_NODE:-$NPROC_DEFAULT}}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$THREADS_DEFAULT}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
if [ -n "${HOSTFILE:-}" ]; then
  exec "$PYTHON" -m deepspeed.launcher.runner --hostfile "$HOSTFILE" --num_nodes "$NNODES" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --num_gpus "$NPROC_PER_NODE" \
    "$SCRIPT" "$@"
fi
exec "$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  --nproc_per_node "$NPROC_PER_NODE" "$SCRIPT" "$@"
