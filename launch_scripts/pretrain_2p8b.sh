#!/usr/bin/env bash
""":"
# pythia-2.8b pretraining (configs/pretrain_2p8b.yaml). This file is both a bash and a python script:
#   bash launch_scripts/pretrain_2p8b.sh [key=value ...]        single node (torchrun), or
#     NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 bash ...        on each node (torchrun), or
#     HOSTFILE=hosts bash ...                                 (deepspeed launcher over ssh/pdsh)
#   deepspeed [--num_gpus N] [--hostfile hosts] launch_scripts/pretrain_2p8b.sh [key=value ...]
#   srun python launch_scripts/pretrain_2p8b.sh                 (see slurm_pretrain.sbatch)
# Variables: RUN_DIR, DATA_PREFIX, TOKENIZER, EXTRA="k=v ...", EXPORT=0/1, NPROC_PER_NODE,
#            NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, HOSTFILE.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
NPROC_PER_NODE=${NPROC_PER_NODE:-${GPUS_PER_NODE:-8}}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
if [ -n "${HOSTFILE:-}" ]; then
  exec "$PYTHON" -m deepspeed.launcher.runner --hostfile "$HOSTFILE" --num_nodes "$NNODES" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --num_gpus $NPROC_PER_NODE \
    launch_scripts/pretrain_2p8b.sh "$@"
fi
exec "$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  --nproc_per_node "$NPROC_PER_NODE" launch_scripts/pretrain_2p8b.sh "$@"
":"""
# Python half: run on every rank by torchrun, the deepspeed launcher or srun.
import sys

from megatron_bliss.engine.launch import launch

sys.exit(launch("configs/pretrain_2p8b.yaml", tiny_data=False))
