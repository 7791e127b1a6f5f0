"""The ``megatron-bliss`` console entry point: parses arguments and calls the package.

Each subcommand lives in the module that owns the feature and exposes two functions,
``add_arguments(parser)`` and ``run(args) -> int``; this file only lists them, adds
``--trust-checkpoint`` to the commands that read DeepSpeed checkpoints by path, and turns errors
into exit codes (``exit_codes``): a ``UserError`` (``errors.py``: bad input, a bad config, a
missing or refused file) is one line and 2, an interrupted stage is one line and 75, anything
else keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys

from megatron_bliss import exit_codes
from megatron_bliss.errors import UserError
from megatron_bliss.exit_codes import Interrupted
from megatron_bliss.utils.logging import setup_logging

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "preprocess": ("megatron_bliss.data.preprocess_cli", "corpus -> Megatron indexed .bin/.idx"),
    "train-tokenizer": (
        "megatron_bliss.data.tokenizer_training",
        "train a BPE/sentencepiece tokenizer",
    ),
    "make-shards": ("megatron_bliss.data.shards", "split a corpus into K non-overlapping shards"),
    "merge-datasets": ("megatron_bliss.data.merge", "merge indexed datasets into one"),
    "pretrain": ("megatron_bliss.engine.cli", "one DeepSpeed training stage"),
    "export-hf": ("megatron_bliss.engine.export", "DeepSpeed checkpoint -> Hugging Face directory"),
    "select": ("megatron_bliss.selection.cli", "train a selector, score a shard, keep a fraction"),
    "score": ("megatron_bliss.selection.scoring", "score every sequence of a shard"),
    "pipeline": ("megatron_bliss.pipeline.cli", "multi-round select -> train -> evaluate"),
    "compare": (
        "megatron_bliss.pipeline.compare_cli",
        "several methods from shared warm-ups, over seeds, at equal tokens",
    ),
    "eval": ("megatron_bliss.eval.cli", "lm-eval-harness on a Hugging Face model"),
    "report": ("megatron_bliss.eval.report", "markdown report with plots for run directories"),
    "demo": ("megatron_bliss.demo", "the end-to-end demo that `make demo` runs"),
}


TRUST_CHECKPOINT = ("export-hf", "select")  # commands that read DeepSpeed checkpoints by path
TRUST_HELP = (
    "load DeepSpeed checkpoints with the full unpickler, which runs any code stored in them "
    "(default: weights-only loading of DeepSpeed's own types; anything else is refused)"
)

DESCRIPTION = (
    "LLM pretraining with model-based data selection: preprocess a corpus, pretrain with DeepSpeed, "
    "select data (BLISS, Influence Distillation, MATES, DSIR, reducible loss, perplexity, random), "
    "evaluate, report."
)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron-bliss", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        # Import only the module of the command being run: torch/deepspeed imports are slow.
        if name == wanted:
            importlib.import_module(module_name).add_arguments(sub)
            sub.set_defaults(module=module_name)
            if name in TRUST_CHECKPOINT:
                sub.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    args = build_parser(argv).parse_args(argv)
    try:
        with _trusting(getattr(args, "trust_checkpoint", False)):
            return int(importlib.import_module(args.module).run(args) or 0)
    except Interrupted as stopped:  # a signal, after a checkpoint: rerunning continues
        print(f"megatron-bliss {args.command}: {stopped}", file=sys.stderr)
        return exit_codes.INTERRUPTED
    except UserError as error:  # bad input: one line, no traceback
        logging.getLogger("megatron_bliss").debug("error", exc_info=True)
        print(f"megatron-bliss {args.command}: error: {error}", file=sys.stderr)
        return exit_codes.BAD_INPUT


def _trusting(trust: bool):
    """``--trust-checkpoint`` for every checkpoint the command reads (torch imported only then)."""
    if not trust:
        return contextlib.nullcontext()
    from megatron_bliss.engine.safe_load import trusting

    return trusting(True)


if __name__ == "__main__":
    sys.exit(main())
