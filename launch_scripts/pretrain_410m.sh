#!/usr/bin/env bash
""":"
# pythia-410m pretraining (configs/pretrain_410m.yaml). This file is both a bash and a python script:
#   bash launch_scripts/pretrain_410m.sh [key=value ...]        single node (torchrun), or
#     NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 bash ...        on each node (torchrun), or
#     HOSTFILE=hosts bash ...                                 (deepspeed launcher over ssh/pdsh)
#   deepspeed [--num_gpus N] [--hostfile hosts] launch_scripts/pretrain_410m.sh [key=value ...]
#   srun python launch_scripts/pretrain_410m.sh                 (see slurm_pretrain.sbatch)
# Variables: RUN_DIR, DATA_PREFIX, TOKENIZER, EXTRA="k=v ...", EXPORT=0/1, NPROC_PER_NODE,
#            NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, HOSTFILE,
#            SELECT=METHOD|none (run the config's selection: recipe, or plain pretraining).
#            SELECTIONS_FROM=RUN_DIR (train every round on that run's selections).
NPROC_DEFAULT=8 THREADS_DEFAULT=8
source "$(dirname "$0")/launch_common.sh" "$@"   # execs torchrun / the deepspeed launcher
":"""
# Python half: run on every rank by torchrun, the deepspeed launcher or srun.
import sys

from megatron_bliss.engine.launch import launch
from megatron_bliss.pipeline.recipe import run_recipe

sys.exit(launch("configs/pretrain_410m.yaml", tiny_data=False, recipe=run_recipe))
