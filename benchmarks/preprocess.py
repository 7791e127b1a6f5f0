"""Preprocess throughput: ``--workers 2`` against the plain single-process loop, same input.

The input (>= 30 MB) is the C4 sample (or the built-in corpus) repeated into a temporary file.
Start-up (imports, tokenizer load) is excluded from both timings. The baseline encodes one
document at a time with the same tokenizer and calls ``IndexedDatasetBuilder.add_item``; the
output files must be byte-identical.

    python benchmarks/preprocess.py [--tokenizer T] [--megabytes 30] [--workers 2]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megatron_bliss.data.builtin_corpus import builtin_documents
from megatron_bliss.data.tokenize_files import PreprocessOptions, make_context, process_files
from megatron_bliss.data.tokenizer import TokenizerSpec, load_tokenizer, resolve_eod_id, token_dtype
from megatron_bliss.utils.paths import shared_data_dir


def source_texts() -> tuple[list[str], str]:
    shared = shared_data_dir()
    sample = shared / "c4" / "c4-en-train.00000-of-01024.first1000.jsonl" if shared else None
    if sample is not None and sample.exists():
        return [json.loads(line)["text"] for line in sample.read_text().splitlines()], "C4"
    return builtin_documents(), "built-in corpus"


def build_input(path: Path, megabytes: float) -> int:
    texts, _ = source_texts()
    lines = [json.dumps({"text": t}) + "\n" for t in texts]
    written = 0
    with open(path, "w") as handle:
        while written < megabytes * 1e6:
            for line in lines:
                handle.write(line)
                written += len(line.encode())
    return written


def baseline(tokenizer, source: Path, prefix: str) -> tuple[float, int]:
    """The reference loop: one document at a time, ``add_item`` per document."""
    eod = resolve_eod_id(tokenizer)
    dtype = token_dtype(tokenizer).type
    start = time.perf_counter()
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    tokens = 0
    with open(source) as handle:
        for line in handle:
            ids = tokenizer.encode(json.loads(line)["text"], add_special_tokens=False) + [eod]
            builder.add_item(torch.tensor(ids, dtype=torch.int64))
            builder.end_document()
            tokens += len(ids)
    builder.finalize(prefix + ".idx")
    return time.perf_counter() - start, tokens


def ours(spec: TokenizerSpec, source: Path, prefix: str, workers: int) -> tuple[float, int]:
    options = PreprocessOptions([str(source)], prefix, spec, workers=workers, append_eod=True,
                                progress=False)  # fmt: skip
    context = make_context(options)  # tokenizer load: start-up, excluded
    start = time.perf_counter()
    result = process_files(context, [source], prefix)
    return time.perf_counter() - start, sum(output.tokens for output in result.outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = shared_data_dir()
    default = shared / "tokenizers" / "gpt-neox-20b_tokenizer.json" if shared else None
    parser.add_argument("--tokenizer", default=str(default) if default else None)
    parser.add_argument("--megabytes", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if not args.tokenizer:
        parser.error("--tokenizer is required when ../shared/data is absent")
    spec = TokenizerSpec(args.tokenizer)
    tokenizer = load_tokenizer(spec)
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "input.jsonl"
        size = build_input(source, args.megabytes)
        base_seconds, base_tokens = baseline(tokenizer, source, f"{folder}/base")
        our_seconds, our_tokens = ours(spec, source, f"{folder}/ours", args.workers)
        identical = all(
            filecmp.cmp(f"{folder}/base{s}", f"{folder}/ours_text_document{s}", shallow=False)
            for s in (".bin", ".idx")
        )
    base_rate, our_rate = base_tokens / base_seconds, our_tokens / our_seconds
    print(f"input: {size / 1e6:.1f} MB of {source_texts()[1]}, tokenizer {args.tokenizer}")
    print(f"single-process loop: {base_rate:,.0f} tokens/s ({base_seconds:.1f} s)")
    print(f"preprocess --workers {args.workers}: {our_rate:,.0f} tokens/s ({our_seconds:.1f} s)")
    print(f"speed-up: {our_rate / base_rate:.2f}x; identical output: {identical}")
    if not identical or base_tokens != our_tokens:
        raise SystemExit("outputs differ")
    np.testing.assert_equal(base_tokens, our_tokens)


if __name__ == "__main__":
    main()
