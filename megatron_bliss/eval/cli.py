"""``megatron-bliss eval``: lm-eval-harness on a Hugging Face model directory.

Offline, from the local task files (layout of ``../shared/data/eval``)::

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 megatron-bliss eval --model out/hf \\
        --tasks lambada_openai,hellaswag,piqa,arc_easy,arc_challenge,sciq,winogrande,boolq,openbookqa \\
        --task-data ../shared/data/eval --ppl-data ../shared/data/c4/c4-en-validation.2k.jsonl --limit 50

Online users leave out ``--task-data`` and get lm-eval's hub datasets.
"""

from __future__ import annotations

import argparse
from typing import Any

from megatron_bliss.errors import ConfigError
from megatron_bliss.eval.harness import (
    evaluate_model,
    headline_average,
    headline_label,
    parse_task_list,
)
from megatron_bliss.eval.task_specs import HEADLINE_TASKS, KNOWN_TASKS, PPL_TASK, headline_metric

DEFAULT_TASKS = ",".join(("lambada_openai",) + HEADLINE_TASKS)


def positive_limit(text: str) -> float:
    """``--limit``: a document count, or a fraction below 1 (lm-eval's meaning); never <= 0,
    which lm-eval only reports as a failure deep inside a task."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def batch_size_value(text: str) -> str:
    if text != "auto" and not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Hugging Face model directory")
    parser.add_argument(
        "--tasks",
        default=DEFAULT_TASKS,
        help=f"comma-separated lm-eval task names (known: {', '.join(KNOWN_TASKS)})",
    )
    parser.add_argument(
        "--task-data",
        default=None,
        help="folder of local task files in the layout of ../shared/data/eval (else: the hub)",
    )
    parser.add_argument(
        "--ppl-data",
        default=None,
        help=f"jsonl of {{'text'}} rows: held-out perplexity ({PPL_TASK})",
    )
    parser.add_argument(
        "--limit", type=positive_limit, default=None,
        help="documents per task (quick runs); below 1: that fraction of each task",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=batch_size_value, default="8",
                        help="batch size, or 'auto'")  # fmt: skip
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:0 ... (default: auto)")
    parser.add_argument(
        "--output", default=None, help="eval.json path (default: RUN_DIR/ or MODEL_DIR/eval.json)"
    )
    parser.add_argument(
        "--target-set-task",
        default=None,
        help="task whose data was also the selection target set (marked in the table)",
    )


def _number(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"


def _format_value(entry: dict[str, Any], metric: str) -> str:
    value = entry.get(metric)
    if value is None:
        return "-"
    stderr = entry.get(f"{metric}_stderr")
    show_stderr = isinstance(stderr, float) and "perplexity" not in metric
    return _number(value) + (f" ± {_number(stderr)}" if show_stderr else "")


def results_table(results: dict[str, dict[str, Any]], requested: list[str], target_set_task=None):
    """A rich table: one row per task, the headline average, and LAMBADA beside it."""
    from rich.table import Table

    table = Table(title="lm-eval zero-shot results")
    for column in ("task", "split", "docs", "metric", "value", "also"):
        table.add_column(column, no_wrap=True)
    for task in requested:
        entry = results.get(task)
        if entry is None:
            table.add_row(task, "-", "-", "-", "skipped (see messages above)", "")
            continue
        if task == PPL_TASK:
            metric, also = "word_perplexity", "bits_per_byte"
        else:
            metric = headline_metric(task)
            also = (
                "acc" if metric == "acc_norm" else ("perplexity" if "perplexity" in entry else "")
            )
        label = task + (" (target set)" if task == target_set_task else "")
        split = entry["split"] + (" (lm-eval scores test)" if entry.get("note") else "")
        also_text = f"{also} {_format_value(entry, also)}" if also else ""
        table.add_row(
            label,
            split,
            str(entry["num_docs"]),
            metric,
            _format_value(entry, metric),
            also_text,
        )
    average, used, missing = headline_average(results)
    if average is not None:
        table.add_section()
        table.add_row(f"average ({len(used)} tasks)", "", "", "", f"{average:.4f}", "")
        table.caption = headline_label(used, missing).capitalize() + (
            "; LAMBADA reported beside it" if "lambada_openai" in results else ""
        )
    return table


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    limit = args.limit
    if limit is not None and float(limit).is_integer():
        limit = int(limit)
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    requested = parse_task_list(args.tasks)
    if not requested and not args.ppl_data:
        raise ConfigError(f"--tasks names no task (known: {', '.join(KNOWN_TASKS)})")
    results = evaluate_model(
        args.model,
        requested,
        task_data=args.task_data,
        ppl_data=args.ppl_data,
        limit=limit,
        batch_size=batch_size,
        device=args.device,
        output=args.output,
        target_set_task=args.target_set_task,
    )
    if args.ppl_data and PPL_TASK not in requested:
        requested.append(PPL_TASK)
    console = Console()
    console.width = max(console.width, 160)  # pipes and CI report 80 columns
    console.print(results_table(results, requested, args.target_set_task))
    return 0
