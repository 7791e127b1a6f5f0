"""``megatron-bliss pretrain --config CFG.yaml [key=value ...]``: one DeepSpeed training stage.

    megatron-bliss pretrain --config configs/pretrain_tiny_cpu.yaml run_dir=runs/tiny
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 -m megatron_bliss.cli pretrain --config ...
    deepspeed --num_gpus 8 --hostfile hosts -m megatron_bliss.cli pretrain --config ...
    srun python -m megatron_bliss.cli pretrain --config ...      (SLURM variables are read)

``--dry-run`` joins the world, runs one all-reduce and exits before touching data or models.
A run stopped by SIGTERM/SIGUSR1 checkpoints and exits with ``exit_codes.INTERRUPTED`` (75), so a
SLURM script can requeue it; rerunning the same command continues from that checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from megatron_bliss import exit_codes

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="pretrain YAML (configs/pretrain_*.yaml)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    parser.add_argument(
        "--dry-run", action="store_true", help="check the world with one all-reduce and exit"
    )
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS
    )


def dry_run_world(config) -> dict:
    from megatron_bliss.engine.config import device_type
    from megatron_bliss.engine.distributed import dry_run, init_distributed

    context = init_distributed(device_type(config))
    try:
        total = dry_run(context)
        return {"rank": context.rank, "world_size": context.world_size, "all_reduce": total}
    finally:
        context.close()


def run(args: argparse.Namespace) -> int:
    from megatron_bliss.engine.config import load_pretrain_config
    from megatron_bliss.engine.distributed import launched_world_size, rank

    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    config = load_pretrain_config(args.config, args.overrides)
    code = exit_codes.FINISHED
    if args.dry_run:
        result = dry_run_world(config)
        if result["rank"] == 0:
            print(json.dumps(result))
    else:
        from megatron_bliss.engine.trainer import pretrain

        summary = pretrain(config)
        if summary["interrupted"]:
            code = exit_codes.INTERRUPTED
        if rank() == 0:
            report(summary)
    if launched_world_size() > 1:
        # Multi-rank teardown in C++ occasionally aborts after a clean run (stack-notes, sec. 1):
        # the process group is already destroyed, so flush and leave without interpreter teardown.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def report(summary: dict) -> None:
    """The last line: where a finished run ended, or how to continue an interrupted one."""
    if summary["interrupted"]:
        print(
            f"pretrain: interrupted by signal {summary.get('signal')} after step "
            f"{summary['final_step']}; checkpoint saved in {summary['checkpoint']}; rerun the "
            f"same command to continue (exit code {exit_codes.INTERRUPTED})",
            file=sys.stderr,
        )
        return
    print(
        f"pretrain: step {summary['final_step']}, loss {summary['final_loss']}, "
        f"{summary['consumed_tokens']} tokens, run dir {summary['run_dir']}"
    )
