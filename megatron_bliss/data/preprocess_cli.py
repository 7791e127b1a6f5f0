"""``megatron-bliss preprocess`` (and ``tools/preprocess_data.py``): arguments -> ``run_preprocess``.

Accepts Megatron-LM's flags (``--json-keys``, ``--tokenizer-type``, ``--tokenizer-model``,
``--vocab-file``, ``--merge-file``, ``--partitions``, ``--log-interval``, ``--workers``) besides
the project's ``--tokenizer``.
"""

from __future__ import annotations

import argparse

from megatron_bliss.data.preprocess import PreprocessOptions, run_preprocess
from megatron_bliss.data.tokenizer import spec_from_args


def add_arguments(parser: argparse.ArgumentParser, input_required: bool = True) -> None:
    group = parser.add_argument_group("input")
    group.add_argument(
        "--input",
        nargs="+",
        required=input_required,
        help="files (.jsonl/.json, optionally .gz/.zst, .parquet), globs or directories",
    )
    group.add_argument("--json-keys", nargs="+", default=["text"], help="fields to tokenise")
    group.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="skip (and count) malformed lines instead of stopping at the first",
    )
    group = parser.add_argument_group("tokenizer")
    group.add_argument(
        "--tokenizer", help="HF directory or hub name, tokenizers *.json, or *.model"
    )
    group.add_argument(
        "--tokenizer-type",
        choices=["HuggingFaceTokenizer", "GPT2BPETokenizer"],
        help="Megatron-style tokenizer selection",
    )
    group.add_argument("--tokenizer-model", help="with HuggingFaceTokenizer: the tokenizer to load")
    group.add_argument("--vocab-file", help="with GPT2BPETokenizer: vocab.json")
    group.add_argument("--merge-file", help="with GPT2BPETokenizer: merges.txt")
    group.add_argument("--append-eod", action="store_true", help="append end-of-document id")
    group.add_argument("--eod-token", help="token (or id) to use as end-of-document")
    group.add_argument("--add-bos", action="store_true", help="prepend the tokenizer's bos id")
    group = parser.add_argument_group("output")
    group.add_argument("--output-prefix", required=True, help="writes PREFIX_{key}_document.*")
    group.add_argument(
        "--shards",
        type=int,
        default=1,
        help="deal documents round-robin into K shards PREFIX_shard{k}_{key}_document",
    )
    group.add_argument(
        "--partitions",
        type=int,
        default=1,
        help="process input files in P restartable parts under PREFIX.parts/, then merge",
    )
    group = parser.add_argument_group("runtime")
    group.add_argument("--workers", type=int, default=1, help="tokenising processes")
    group.add_argument("--batch-size", type=int, default=1024, help="records per worker batch")
    group.add_argument("--log-interval", type=int, default=0, help="log rates every N documents")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


def options_from_args(args: argparse.Namespace) -> PreprocessOptions:
    return PreprocessOptions(
        inputs=list(args.input),
        output_prefix=args.output_prefix,
        tokenizer=spec_from_args(args),
        json_keys=list(args.json_keys),
        workers=args.workers,
        append_eod=args.append_eod,
        eod_token=args.eod_token,
        add_bos=args.add_bos,
        skip_bad_lines=args.skip_bad_lines,
        partitions=args.partitions,
        shards=args.shards,
        log_interval=args.log_interval,
        batch_lines=args.batch_size,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    run_preprocess(options_from_args(args))
    return 0
