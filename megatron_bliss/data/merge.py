"""Merge finished indexed datasets into one (``megatron-bliss merge-datasets``).

Uses ``IndexedDatasetBuilder.add_index`` (the compact subclass), so the merged files are exactly
the concatenation a single run over the same documents would have written. Manifests beside the
inputs, when present, are combined into the merged one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import numpy as np

from megatron_bliss.data.indexed import (
    CompactIndexedDatasetBuilder,
    commit_outputs,
    make_output_parent,
    remove_outputs,
    remove_stale_temporaries,
)
from megatron_bliss.data.pool import check_index_file, require_indexed_files
from megatron_bliss.errors import ConfigError, InputError, MissingFileError
from megatron_bliss.utils.io import atomic_write_json

logger = logging.getLogger(__name__)


def _dtype_of(prefix: str) -> np.dtype:
    from megatron.core.datasets.indexed_dataset import _IndexReader

    require_indexed_files(prefix)
    check_index_file(prefix)
    return np.dtype(_IndexReader(prefix + ".idx", multimodal=False).dtype)


def check_same_tokenizer(prefixes: list[str]) -> None:
    """Token ids of different tokenizers mean different things: never concatenate them. Checked
    on the manifests' ``tokenizer_hash`` (datasets without a manifest cannot be checked)."""
    seen: dict[str, str] = {}
    for prefix in prefixes:
        path = Path(prefix + ".json")
        if not path.exists():
            continue
        try:
            digest = json.loads(path.read_text()).get("tokenizer_hash")
        except (ValueError, AttributeError):
            raise InputError(f"{path}: unreadable manifest (expected a JSON object)") from None
        if digest and seen and digest not in seen:
            first_prefix, first_digest = next(iter(seen.items()))[::-1]
            raise InputError(
                f"{prefix}: made with another tokenizer than {first_prefix} "
                f"(tokenizer_hash {digest[:12]} vs {first_digest[:12]}); refusing to merge"
            )
        if digest:
            seen.setdefault(digest, prefix)


def combine_manifests(prefixes: list[str]) -> dict | None:
    """Counts summed and inputs concatenated; None unless every input has a manifest."""
    manifests = []
    for prefix in prefixes:
        path = Path(prefix + ".json")
        if not path.exists():
            return None
        manifests.append(json.loads(path.read_text()))
    merged = dict(manifests[0])
    merged["inputs"] = [entry for m in manifests for entry in m.get("inputs", [])]
    for count in ("documents", "tokens", "empty_documents", "bad_lines"):
        merged[count] = sum(int(m.get(count) or 0) for m in manifests)
    merged["merged_from"] = [os.path.basename(p) for p in prefixes]
    return merged


def merge_datasets(prefixes: list[str], output_prefix: str, manifest: dict | None = None) -> str:
    """Concatenate ``prefixes`` in order into ``output_prefix`` (written under a temp name)."""
    if not prefixes:
        raise ConfigError("merge: no input datasets")
    dtypes = {prefix: _dtype_of(prefix) for prefix in prefixes}
    dtype = dtypes[prefixes[0]]
    check_same_tokenizer(prefixes)
    make_output_parent(output_prefix)
    remove_stale_temporaries(output_prefix)
    temporary = f"{output_prefix}.tmp{os.getpid()}"
    builder = CompactIndexedDatasetBuilder(temporary + ".bin", dtype=dtype)
    try:
        for prefix in prefixes:
            builder.add_index(prefix)
        builder.finalize(temporary + ".idx")
        commit_outputs(temporary, output_prefix)
    except BaseException:
        if not builder.data_file.closed:
            builder.data_file.close()
        remove_outputs(temporary)
        raise
    manifest = manifest if manifest is not None else combine_manifests(prefixes)
    if manifest is not None:
        atomic_write_json(output_prefix + ".json", manifest)
    logger.info("merged %d dataset(s) into %s", len(prefixes), output_prefix)
    return output_prefix


def prefixes_in(folder: str) -> list[str]:
    """Every ``*.idx`` prefix in a folder, sorted by name."""
    found = sorted(str(p)[: -len(".idx")] for p in Path(folder).glob("*.idx"))
    if not found:
        raise MissingFileError(f"{folder}: no .idx files to merge")
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", help="dataset prefixes (no extension), in order")
    parser.add_argument("--input-dir", help="merge every *.idx prefix in this folder (sorted)")
    parser.add_argument("--output-prefix", required=True, help="merged dataset prefix")


def run(args: argparse.Namespace) -> int:
    prefixes = list(args.input or []) + (prefixes_in(args.input_dir) if args.input_dir else [])
    merge_datasets(prefixes, args.output_prefix)
    return 0
