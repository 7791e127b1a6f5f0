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
from megatron_bliss.data.preprocess import (
    RunContext,
    check_has_documents,
    describe_inputs,
    manifest_for,
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
    }


def _finished_part(marker: Path, identity: dict) -> dict | None:
    if not marker.exists():
        return None
    recorded = json.loads(marker.read_text())
    if {k: recorded.get(k) for k in identity} != identity:
        logger.warning("%s: made from other inputs or flags; redoing the part", marker)
        return None
    return recorded["result"]


def process_in_partitions(context: RunContext, paths: list[Path]) -> dict:
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
            atomic_write_json(marker, identity | {"result": result})
        else:
            logger.info(
                "part %d/%d already finished (%s); skipped", number + 1, len(groups), marker
            )
        results.append(result)
        next_document = result["next_document"]
    counts = {
        name: [sum(r["counts"][name][0] for r in results), 0] for name in results[0]["counts"]
    }
    try:
        check_has_documents(paths, counts, options.shards)
    except ValueError:
        shutil.rmtree(parts_dir)
        raise
    merged = _merge_parts(context, results, all_inputs)
    shutil.rmtree(parts_dir)
    return merged


def _merge_parts(context: RunContext, results: list[dict], inputs: list[dict]) -> dict:
    final = {
        name: process_name(context.options.output_prefix, name, context.options.shards)
        for name in results[0]["outputs"]
    }
    merged = {
        "outputs": final,
        "counts": {
            name: [sum(r["counts"][name][i] for r in results) for i in (0, 1)] for name in final
        },
        "empty_documents": {
            key: sum(r["empty_documents"][key] for r in results) for key in context.setup.keys
        },
        "bad_lines": sum(r["bad_lines"] for r in results),
        "next_document": results[-1]["next_document"],
        "rates": "; ".join(r["rates"] for r in results),
    }
    for name, output in final.items():
        parts = [r["outputs"][name] for r in results]
        merge_datasets(parts, output, manifest_for(context, inputs, merged, name))
    return merged


def process_name(prefix: str, name: str, shards: int) -> str:
    from megatron_bliss.data.preprocess import output_name

    key, shard = name.split("/")
    return output_name(prefix, key, int(shard) if shards > 1 else None)
