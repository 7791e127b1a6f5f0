"""``megatron-bliss select``: train whatever a method needs, score a shard, keep a fraction.

    megatron-bliss select --method bliss --config configs/select_tiny_cpu.yaml \\
        --data-prefix out/c4_text_document --target-data target.jsonl --tokenizer tok/ \\
        --run-dir runs/select bliss.outer_steps=50
    torchrun --nproc_per_node 2 -m megatron_bliss.cli select --method bliss ...

Parses the command line and calls ``selection.run.run_selection`` (which the pipeline calls
directly); the YAML and its per-method sections are described in ``selection/config.py``.
"""

from __future__ import annotations

import argparse

# The library lives in selection.config / run / stand_in; these names stay importable from here
# for scripts written against the earlier layout.
from megatron_bliss.selection.config import load_select_config  # noqa: F401
from megatron_bliss.selection.registry import SELECTORS
from megatron_bliss.selection.run import run_selection
from megatron_bliss.selection.stand_in import stand_in_target  # noqa: F401


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, choices=sorted(SELECTORS))
    parser.add_argument("--config", default=None, help="YAML (e.g. configs/select_tiny_cpu.yaml)")
    parser.add_argument("--data-prefix", required=True, help="indexed shard to select from")
    parser.add_argument("--target-data", default=None, help="target set, JSON lines")
    parser.add_argument(
        "--target-format", default="documents",
        choices=["documents", "last_word", "prompt_continuation"],
    )  # fmt: skip
    parser.add_argument("--tokenizer", default=None, help="HF tokenizer dir/name or tokenizer.json")
    parser.add_argument("--target-model", default=None, help="HF dir or DeepSpeed checkpoint")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--fraction", type=float, default=None, help="kept fraction (default 0.2)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--gumbel-temperature", type=float, default=None)
    parser.add_argument("overrides", nargs="*", help="key=value or section.key=value")


def run(args: argparse.Namespace) -> int:
    from megatron_bliss.config import parse_overrides
    from megatron_bliss.engine.distributed import join_launched_group
    from megatron_bliss.utils.device import resolve_device

    parse_overrides(args.overrides)  # a malformed override stops before the process group
    join_launched_group(resolve_device().type)
    run_selection(
        args.method, args.config, data_prefix=args.data_prefix, run_dir=args.run_dir,
        target_data=args.target_data, target_format=args.target_format,
        tokenizer=args.tokenizer, target_model=args.target_model, overrides=args.overrides,
        fraction=args.fraction, seed=args.seed, gumbel_temperature=args.gumbel_temperature,
    )  # fmt: skip
    return 0
