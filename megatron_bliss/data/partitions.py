"""``preprocess --partitions P``: restartable processing in parts, then one merge.

The input files are split into P contiguous groups (P is capped at the number of files; a single
file is one part). Part k is written as finished datasets under ``PREFIX.parts/part{k}`` with a
completion marker ``part{k}.done`` recording its files and the output flags; a rerun skips every
part whose marker matches. Document numbering continues across parts, so the merged output
(``--shards`` included) is byte-identical to an unpartitioned run.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from megatron_bliss.data.merge import merge_datasets
from megatron_bliss.data.preprocess_result import (
    RESULT_FORMAT,
    FilesResult,
    Output,
    check_has_documents,
    describe_inputs,
)
from megatron_bliss.data.tokenize_files import (
    RunContext,
    manifest_for,
    output_name,
    process_files,
)
from megatron_bliss.utils.io import atomic_write_json

logger = logging.getLogger(__name__)


def split_files(paths: list[Path], partitions: int) -> list[list[Path]]:
    groups = np.array_split(np.arange(len(paths)), min(partitions, len(paths)))
    return [[paths[i] for i in group] for group in groups]


def _marker_identity(context: RunContext, inputs: list[dict]) -> dict:
    return {
        "inputs": inputs,
        "tokenizer_hash": context.tokenizer_hash,
        "flags": context.options.output_flags(),
        "format": RESULT_FORMAT,
    }


def _finished_part(marker: Path, identity: dict) -> FilesResult | None:
    if not marker.exists():
        return None
    recorded = json.loads(marker.read_text())
    if {k: recorded.get(k) for k in identity} != identity:
        logger.warning("%s: made from other inputs, flags or format; redoing the part", marker)
        return None
    return FilesResult.from_json(recorded["result"])


def process_in_partitions(context: RunContext, paths: list[Path]) -> FilesResult:
    """Process every unfinished part, merge all parts, then remove ``PREFIX.parts/``."""
    options = context.options
    parts_dir = Path(options.output_prefix + ".parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    groups = split_files(paths, options.partitions)
    if len(groups) < options.partitions:
        logger.info("--partitions %d capped at %d input file(s)", options.partitions, len(groups))
    results, all_inputs = [], []
    next_document = dict.fromkeys(context.setup.keys, 0)
    for number, group in enumerate(groups):
        inputs = describe_inputs(group)
        all_inputs.extend(inputs)
        identity = _marker_identity(context, inputs) | {"first_document": next_document}
        marker = parts_dir / f"part{number:05d}.done"
        result = _finished_part(marker, identity)
        if result is None:
            logger.info("part %d/%d: %d file(s)", number + 1, len(groups), len(group))
            prefix = str(parts_dir / f"part{number:05d}")
            result = process_files(context, group, prefix, first_document=next_document)
            atomic_write_json(marker, identity | {"result": result.to_json()})
        else:
            logger.info(
                "part %d/%d already finished (%s); skipped", number + 1, len(groups), marker
            )
        results.append(result)
        next_document = result.next_document
    merged = _totals(context, results)
    try:
        check_has_documents(paths, merged, options.shards)
    except ValueError:
        shutil.rmtree(parts_dir)
        raise
    _merge_parts(context, results, merged, all_inputs)
    shutil.rmtree(parts_dir)
    return merged


def _totals(context: RunContext, results: list[FilesResult]) -> FilesResult:
    """The parts' results added up, with each output at its final (unpartitioned) path."""
    options = context.options
    outputs = []
    for position, first in enumerate(results[0].outputs):
        parts = [result.outputs[position] for result in results]
        shard = first.shard if options.shards > 1 else None
        outputs.append(Output(
            first.key, first.shard, output_name(options.output_prefix, first.key, shard),
            sum(p.documents for p in parts), sum(p.tokens for p in parts),
        ))  # fmt: skip
    return FilesResult(
        outputs=outputs,
        empty_documents={
            key: sum(r.empty_documents[key] for r in results) for key in context.setup.keys
        },
        bad_lines=sum(r.bad_lines for r in results),
        next_document=results[-1].next_document,
        rates="; ".join(r.rates for r in results),
    )


def _merge_parts(
    context: RunContext, results: list[FilesResult], merged: FilesResult, inputs: list[dict]
) -> None:
    for position, output in enumerate(merged.outputs):
        parts = [result.outputs[position].path for result in results]
        merge_datasets(parts, output.path, manifest_for(context, inputs, merged, output))
