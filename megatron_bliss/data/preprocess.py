"""Corpus -> Megatron indexed datasets (``PREFIX_{key}_document.bin/.idx``): the whole command.

Expands the inputs, loads the tokenizer once, then tokenises every file in one go
(``tokenize_files.process_files``) or in restartable parts (``partitions.py``, ``--partitions``),
and writes a manifest ``SHARD.json`` beside each output (tokenizer hash, flags, input checksums,
counts; docs/formats.md). The dependency points one way: this module uses both, neither uses it.
"""

from __future__ import annotations

import logging

from megatron_bliss.data.indexed import make_output_parent
from megatron_bliss.data.partitions import process_in_partitions
from megatron_bliss.data.preprocess_result import FilesResult, describe_inputs
from megatron_bliss.data.readers import expand_inputs
from megatron_bliss.data.tokenize_files import (  # noqa: F401 - output_name: public here too
    PreprocessOptions,
    make_context,
    output_name,
    process_files,
    warn_replaced_outputs,
    write_manifests,
)
from megatron_bliss.errors import ConfigError

logger = logging.getLogger(__name__)


def run_preprocess(options: PreprocessOptions) -> dict:
    """The whole command: expand inputs, tokenise (optionally in restartable parts), write the
    manifests; returns ``FilesResult.summary()`` (each output's path with its counts)."""
    paths = expand_inputs(options.inputs)
    if min(options.workers, options.shards, options.partitions, options.batch_lines) < 1:
        raise ConfigError("--workers, --shards, --partitions and --batch-size must be at least 1")
    make_output_parent(options.output_prefix)  # before any work: a bad prefix fails at once
    context = make_context(options)
    warn_replaced_outputs(context)
    logger.info(
        "preprocess: %d input file(s), tokenizer %s (%d tokens, %s), eod %s, %d worker(s)",
        len(paths),
        options.tokenizer.describe(),
        len(context.tokenizer),
        context.setup.dtype,
        context.setup.eod_id,
        options.workers,
    )
    if options.partitions > 1:
        result = process_in_partitions(context, paths)
    else:
        result = process_files(context, paths, options.output_prefix)
        write_manifests(context, describe_inputs(paths), result)
    log_summary(result)
    return result.summary()


def log_summary(result: FilesResult) -> None:
    logger.info(
        "done: %d documents, %d tokens, %d empty documents skipped, %d bad lines skipped; %s",
        sum(output.documents for output in result.outputs),
        sum(output.tokens for output in result.outputs),
        sum(result.empty_documents.values()),
        result.bad_lines,
        result.rates,
    )
    for output in result.outputs:
        logger.info("wrote %s.bin/.idx/.json", output.path)
