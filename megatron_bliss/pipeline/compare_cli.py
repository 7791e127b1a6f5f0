"""``megatron-bliss compare --config CFG.yaml [--methods a,b] [--seeds N] [--run-dir DIR]``.

    megatron-bliss compare --config configs/compare_target_directed.yaml            # 3 seeds
    megatron-bliss compare --config configs/compare_target_directed.yaml --seeds 1  # quick form

Several methods through the same pipeline from one shared warm-up per seed, at equal
target-training tokens; writes ``DIR/compare.json`` and ``DIR/report.md``. Parses the command line
and calls ``compare.run_compare``; rerunning resumes.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline YAML with a compare: section")
    parser.add_argument("--methods", default=None, help="comma-separated (default: the config's)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds")
    parser.add_argument("--run-dir", default=None, help="default: the config's run_dir")
    parser.add_argument("overrides", nargs="*", help="key=value or section.key=value")


def run(args: argparse.Namespace) -> int:
    from megatron_bliss.pipeline.compare import run_compare
    from megatron_bliss.pipeline.config import load_pipeline_config

    overrides = list(args.overrides)
    if args.methods:
        overrides.append(f"compare.methods=[{args.methods}]")
    if args.seeds is not None:
        overrides.append(f"compare.seeds={args.seeds}")
    config = load_pipeline_config(args.config, overrides)
    run_compare(config, args.run_dir, where=args.config, overrides=overrides)
    return 0
