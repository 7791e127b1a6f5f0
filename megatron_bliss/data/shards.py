"""K non-overlapping shards, one per selection round (``megatron-bliss make-shards``).

Documents are dealt **round-robin**: document j (in input order, empty documents excluded) goes
to shard ``j % K``. This streams (no first pass to count documents) and gives every shard the same
mix of the corpus, which a contiguous split of a date- or source-ordered corpus would not.

Two inputs: a raw corpus (``--input``, tokenised as ``preprocess --shards K``), or an existing
indexed dataset (``--data-prefix SHARD``), split without re-tokenising. Outputs are
``PREFIX_shard{k}_{key}_document.bin/.idx/.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from pathlib import Path

import numpy as np

from megatron_bliss.data.indexed import (
    CompactIndexedDatasetBuilder,
    commit_outputs,
    make_output_parent,
    remove_outputs,
)
from megatron_bliss.data.pool import SequencePool
from megatron_bliss.errors import ConfigError, InputError
from megatron_bliss.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

_CHUNK_DOCUMENTS = 65536


def _key_of(prefix: str) -> str:
    match = re.search(r"_([^_/]+)_document$", prefix)
    return match.group(1) if match else "text"


def check_fills_shards(source: str, documents: int, num_shards: int) -> None:
    """Every shard needs a document: an empty shard makes its selection round fail much later."""
    if documents < num_shards:
        raise InputError(
            f"{source}: {documents} document(s) cannot fill {num_shards} shards "
            "(lower --num-shards)"
        )


def split_indexed(data_prefix: str, num_shards: int, output_prefix: str) -> list[str]:
    """Deal the documents of a finished dataset round-robin into ``num_shards`` datasets."""
    if num_shards < 1:
        raise ConfigError(f"--num-shards must be at least 1, got {num_shards}")
    source = SequencePool(data_prefix, 1)  # validated, contiguous view of the tokens
    lengths = source.document_lengths
    check_fills_shards(data_prefix, len(lengths), num_shards)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    key = _key_of(data_prefix)
    finals = [f"{output_prefix}_shard{k}_{key}_document" for k in range(num_shards)]
    temporaries = [f"{final}.tmp{os.getpid()}" for final in finals]
    make_output_parent(output_prefix)
    builders = [CompactIndexedDatasetBuilder(t + ".bin", dtype=source.dtype) for t in temporaries]
    try:
        for k, builder in enumerate(builders):
            chosen = np.arange(k, len(lengths), num_shards)
            for begin in range(0, len(chosen), _CHUNK_DOCUMENTS):
                documents = chosen[begin : begin + _CHUNK_DOCUMENTS]
                pieces = [source.tokens[starts[d] : ends[d]] for d in documents]
                tokens = np.concatenate(pieces) if pieces else np.zeros(0, source.dtype)
                builder.add_documents(tokens, lengths[documents])
            builder.finalize(temporaries[k] + ".idx")
        for temporary, final in zip(temporaries, finals):
            commit_outputs(temporary, final)
    except BaseException:
        for builder, temporary in zip(builders, temporaries):
            if not builder.data_file.closed:
                builder.data_file.close()
            remove_outputs(temporary)
        raise
    _write_shard_manifests(data_prefix, finals, lengths, num_shards)
    return finals


def _write_shard_manifests(data_prefix, finals, lengths, num_shards) -> None:
    source_manifest = Path(data_prefix + ".json")
    base = json.loads(source_manifest.read_text()) if source_manifest.exists() else {}
    for k, final in enumerate(finals):
        shard_lengths = lengths[k::num_shards]
        manifest = base | {
            "split_from": data_prefix,
            "shard": k,
            "num_shards": num_shards,
            "split": "round-robin over documents",
            "documents": len(shard_lengths),
            "tokens": int(shard_lengths.sum()),
        }
        atomic_write_json(final + ".json", manifest)
        logger.info("shard %d: %d documents -> %s", k, len(shard_lengths), final)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from megatron_bliss.data.preprocess_cli import add_arguments as add_preprocess_arguments

    parser.add_argument("--num-shards", type=int, required=True, help="K: one shard per round")
    parser.add_argument("--data-prefix", help="split this indexed dataset instead of a corpus")
    add_preprocess_arguments(parser, input_required=False)


def run(args: argparse.Namespace) -> int:
    if args.data_prefix and args.input:
        raise ConfigError(
            "make-shards takes --input (a corpus) or --data-prefix (a dataset), not both"
        )
    if args.data_prefix:
        split_indexed(args.data_prefix, args.num_shards, args.output_prefix)
        return 0
    if not args.input:
        raise ConfigError("make-shards needs --input (a corpus) or --data-prefix (a dataset)")
    from megatron_bliss.data.preprocess import run_preprocess
    from megatron_bliss.data.preprocess_cli import options_from_args

    options = options_from_args(args)
    options.shards = args.num_shards
    run_preprocess(options)
    return 0
