"""``megatron-bliss pipeline --config CFG.yaml [key=value ...]``: the multi-round loop.

    megatron-bliss pipeline --config configs/pipeline_tiny_cpu.yaml
    megatron-bliss pipeline --config configs/pipeline_pythia_1b.yaml run_dir=runs/bliss_1b

Under a launcher (``torchrun --nproc_per_node 8 -m megatron_bliss.cli pipeline ...``, srun, the
deepspeed launcher) every rank runs the pipeline as one SPMD job (``runner.py``, ``world.py``).
Rerunning the same command resumes: finished stages are skipped, a killed stage continues from its
own checkpoints, and a stage made by a different config stops the run with one line. Parses the
command line and calls ``runner.run_pipeline``, which checks every stage's settings and input
files first (``preflight.py``).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline YAML")
    parser.add_argument("overrides", nargs="*", help="key=value or section.key=value")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from megatron_bliss.pipeline.config import load_pipeline_config
    from megatron_bliss.pipeline.runner import run_pipeline
    from megatron_bliss.utils.launcher_env import launched_world_size

    config = load_pipeline_config(args.config, args.overrides)
    run_pipeline(config, where=args.config, overrides=args.overrides)
    if launched_world_size() > 1:
        from megatron_bliss.engine.distributed import exit_without_teardown

        exit_without_teardown(0)
    return 0
