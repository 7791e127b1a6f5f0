"""Input files -> finished Megatron indexed datasets, streamed and parallel (``process_files``).

The main process reads raw batches of records and writes bytes; worker processes parse JSON and
tokenise with the fast tokenizer's batch encoder. At most a few batches are in flight, results are
consumed in input order, and document sizes live in typed arrays, so memory stays flat and the
output is byte-identical for any number of workers (and to a one-document-at-a-time loop).
Outputs are written under temporary names and renamed only when complete, with a manifest
``SHARD.json`` beside each (docs/formats.md). ``preprocess.py`` runs this once, or once per part
(``partitions.py``); the result is typed (``preprocess_result.py``).
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from megatron_bliss.data.indexed import (
    CompactIndexedDatasetBuilder,
    commit_outputs,
    make_output_parent,
    remove_outputs,
    remove_stale_temporaries,
)
from megatron_bliss.data.preprocess_result import FilesResult, Output, check_has_documents
from megatron_bliss.data.readers import (
    BadLine,
    Batch,
    is_encodable,
    iter_batches,
)
from megatron_bliss.data.tokenizer import (
    DocumentEncoder,
    TokenizerSpec,
    bos_id_or_error,
    load_tokenizer,
    resolve_eod_id,
    token_dtype,
    tokenizer_hash,
)
from megatron_bliss.errors import InputError
from megatron_bliss.utils.io import atomic_write_json

logger = logging.getLogger(__name__)


@dataclass
class PreprocessOptions:
    inputs: list[str]
    output_prefix: str
    tokenizer: TokenizerSpec
    json_keys: list[str] = field(default_factory=lambda: ["text"])
    workers: int = 1
    append_eod: bool = False
    eod_token: str | None = None
    add_bos: bool = False
    skip_bad_lines: bool = False
    partitions: int = 1
    shards: int = 1
    log_interval: int = 0  # documents between log lines; 0: only the final summary
    batch_lines: int = 1024
    progress: bool = True

    def output_flags(self) -> dict:
        """The flags that change the output bytes (recorded in manifests and part markers)."""
        return {
            "json_keys": list(self.json_keys),
            "append_eod": self.append_eod,
            "eod_token": self.eod_token,
            "add_bos": self.add_bos,
            "skip_bad_lines": self.skip_bad_lines,
            "shards": self.shards,
        }


def output_name(prefix: str, key: str, shard: int | None = None) -> str:
    """Megatron naming: ``{prefix}_{key}_document``, or ``{prefix}_shard{k}_{key}_document``."""
    return f"{prefix}_{key}_document" if shard is None else f"{prefix}_shard{shard}_{key}_document"


@dataclass
class EncodingSetup:
    """What every worker needs to turn a batch into token arrays."""

    keys: list[str]
    dtype: str
    eod_id: int | None
    bos_id: int | None
    append_eod: bool
    skip_bad_lines: bool


@dataclass
class BatchResult:
    tokens: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]
    empty: dict[str, int]
    bad_lines: int
    num_records: int
    num_bytes: int
    error: str | None = None


_WORKER: dict = {}  # per process: the tokenizer, its encoder and the setup


def _init_worker(spec: TokenizerSpec, setup: EncodingSetup, in_subprocess: bool) -> None:
    if in_subprocess:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    if _WORKER.get("spec") != spec:  # forked workers inherit the parent's tokenizer
        _WORKER.update(spec=spec, tokenizer=load_tokenizer(spec))
    tokenizer = _WORKER["tokenizer"]
    _WORKER["encoder"] = DocumentEncoder(tokenizer, setup.append_eod, setup.eod_id, setup.bos_id)
    _WORKER["setup"] = setup


def _record_texts(record, keys: list[str]) -> list[str] | str:
    """The texts of one parsed record, or a description of what is wrong with it."""
    if isinstance(record, list):
        return "expected a JSON object, got an array (inputs are JSON lines: one object per line)"
    if not isinstance(record, dict):
        return "expected a JSON object"
    texts = []
    for key in keys:
        if key not in record:
            return f"missing key '{key}'"
        if record[key] is None:
            return f"key '{key}' is null"
        if not isinstance(record[key], str):
            return f"key '{key}' is not a string"
        if not record[key].isascii() and not is_encodable(record[key]):
            return f"key '{key}' holds an unpaired surrogate escape (not valid Unicode text)"
        texts.append(record[key])
    return texts


def _parse_line(line: str) -> dict | str:
    try:
        return json.loads(line)
    except ValueError as error:
        message = getattr(error, "msg", str(error))
        if line.strip() in ("[", "{"):  # a pretty-printed JSON document, not JSON lines
            message += "; inputs are JSON lines: one whole object per line"
        return f"malformed JSON ({message})"


def batch_records(batch: Batch, keys: list[str]) -> Iterator[tuple[int, list[str] | str]]:
    """(line number, texts or error) for every non-blank record of a batch."""
    if batch.lines is not None:
        for offset, line in enumerate(batch.lines):
            if isinstance(line, BadLine):  # undecodable bytes: what is wrong, as for bad JSON
                yield batch.first_line + offset, str(line)
            elif line.strip():
                parsed = _parse_line(line)
                texts = parsed if isinstance(parsed, str) else _record_texts(parsed, keys)
                yield batch.first_line + offset, texts
        return
    for offset in range(len(batch)):
        record = {key: batch.columns[key][offset] for key in keys}
        yield batch.first_line + offset, _record_texts(record, keys)


def encode_batch(batch: Batch) -> BatchResult:
    """Parse, check and tokenise one batch (runs in a worker)."""
    setup: EncodingSetup = _WORKER["setup"]
    texts: dict[str, list[str]] = {key: [] for key in setup.keys}
    empty = dict.fromkeys(setup.keys, 0)
    bad = records = 0
    for line_number, record in batch_records(batch, setup.keys):
        records += 1
        if isinstance(record, str):
            if not setup.skip_bad_lines:
                return BatchResult(
                    {}, {}, empty, 1, records, 0, f"{batch.path}:{line_number}: {record}"
                )
            bad += 1
            continue
        for key, text in zip(setup.keys, record):
            if text == "":
                empty[key] += 1
            else:
                texts[key].append(text)
    tokens, lengths = {}, {}
    for key in setup.keys:
        ids = _WORKER["encoder"].encode_batch(texts[key]) if texts[key] else []
        lengths[key] = np.fromiter(map(len, ids), dtype=np.int32, count=len(ids))
        flat = itertools.chain.from_iterable(ids)
        tokens[key] = np.fromiter(flat, dtype=np.int64, count=int(lengths[key].sum())).astype(
            setup.dtype
        )
    return BatchResult(tokens, lengths, empty, bad, records, batch.num_bytes)


def ordered_map(
    spec: TokenizerSpec, setup: EncodingSetup, batches: Iterable[Batch], workers: int
) -> Iterator[BatchResult]:
    """``encode_batch`` over batches, in input order, with at most ``2 * workers + 2`` in flight.

    (``Pool.imap`` would read the whole input ahead of the workers: unbounded memory.)
    """
    if workers <= 1:
        _init_worker(spec, setup, in_subprocess=False)
        yield from map(encode_batch, batches)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    window = 2 * workers + 2
    with context.Pool(workers, initializer=_init_worker, initargs=(spec, setup, True)) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.apply_async(encode_batch, (batch,)))
            if len(pending) >= window:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


class ShardWriters:
    """One builder per (key, shard) under temporary names; documents dealt round-robin."""

    def __init__(self, prefix: str, keys: list[str], shards: int, dtype, first_document=None):
        self.keys, self.shards = keys, shards
        self.final = {
            (key, k): output_name(prefix, key, k if shards > 1 else None)
            for key in keys
            for k in range(shards)
        }
        self.temporary = {name: f"{path}.tmp{os.getpid()}" for name, path in self.final.items()}
        make_output_parent(prefix)
        for path in self.final.values():
            remove_stale_temporaries(path)
        self.builders = {
            name: CompactIndexedDatasetBuilder(path + ".bin", dtype=dtype)
            for name, path in self.temporary.items()
        }
        self.documents = dict(first_document or dict.fromkeys(keys, 0))
        self.start_documents = dict(self.documents)
        self.counts = {name: [0, 0] for name in self.final}  # documents, tokens

    def add(self, key: str, tokens: np.ndarray, lengths: np.ndarray) -> None:
        if self.shards == 1:
            self._add((key, 0), tokens, lengths)
        else:
            shard_of_document = (self.documents[key] + np.arange(len(lengths))) % self.shards
            shard_of_token = np.repeat(shard_of_document, lengths)
            for k in range(self.shards):
                chosen = shard_of_document == k
                self._add((key, k), tokens[shard_of_token == k], lengths[chosen])
        self.documents[key] += len(lengths)

    def _add(self, name, tokens, lengths) -> None:
        self.builders[name].add_documents(tokens, lengths)
        self.counts[name][0] += len(lengths)
        self.counts[name][1] += int(lengths.sum(dtype=np.int64))

    def outputs(self) -> list[Output]:
        return [
            Output(key, shard, self.final[(key, shard)], *self.counts[(key, shard)])
            for key, shard in self.final
        ]

    def commit(self) -> None:
        for name, builder in self.builders.items():
            builder.finalize(self.temporary[name] + ".idx")
        for name in self.builders:
            commit_outputs(self.temporary[name], self.final[name])

    def discard(self) -> None:
        for name, builder in self.builders.items():
            if not builder.data_file.closed:
                builder.data_file.close()
            remove_outputs(self.temporary[name])


def warn_replaced_outputs(context: RunContext) -> None:
    """Say so when this run will replace a finished dataset (at start, not after hours)."""
    options = context.options
    shards = [None] if options.shards == 1 else list(range(options.shards))
    for key in context.setup.keys:
        for shard in shards:
            final = output_name(options.output_prefix, key, shard)
            if os.path.exists(final + ".idx") or os.path.exists(final + ".bin"):
                logger.warning("%s.bin/.idx exist: this run replaces them when it finishes", final)


class Progress:
    """tqdm bar over input bytes with docs/s and tokens/s, plus log lines every N documents."""

    def __init__(self, paths: list[Path], enabled: bool, log_interval: int):
        from tqdm import tqdm

        plain = all(not p.name.endswith((".gz", ".zst", ".parquet")) for p in paths)
        total = sum(p.stat().st_size for p in paths) if plain else None
        self.bar = tqdm(
            total=total, unit="B", unit_scale=True, desc="preprocess", disable=not enabled or None
        )
        self.start = time.perf_counter()
        self.log_interval = log_interval
        self.documents = self.tokens = self.bytes = self.next_log = 0
        self.next_log = log_interval

    def update(self, documents: int, tokens: int, num_bytes: int) -> None:
        self.documents += documents
        self.tokens += tokens
        self.bytes += num_bytes
        self.bar.update(num_bytes)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix(
            docs_s=f"{self.documents / elapsed:.0f}", tok_s=f"{self.tokens / elapsed:.3g}"
        )
        if self.log_interval and self.documents >= self.next_log:
            logger.info("%s", self.rates())
            self.next_log = self.documents + self.log_interval

    def rates(self) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return (
            f"{self.documents} documents, {self.tokens} tokens, {self.bytes / 1e6:.1f} MB in "
            f"{elapsed:.1f} s ({self.documents / elapsed:.0f} docs/s, "
            f"{self.tokens / elapsed:.0f} tokens/s, {self.bytes / 1e6 / elapsed:.2f} MB/s)"
        )

    def close(self) -> None:
        self.bar.close()


@dataclass
class RunContext:
    """The loaded tokenizer and resolved ids, shared by all parts of one run."""

    options: PreprocessOptions
    tokenizer: object
    setup: EncodingSetup
    tokenizer_hash: str


def make_context(options: PreprocessOptions) -> RunContext:
    tokenizer = load_tokenizer(options.tokenizer)
    needs_eod = options.append_eod or options.eod_token is not None
    eod_id = resolve_eod_id(tokenizer, options.eod_token) if needs_eod else None
    setup = EncodingSetup(
        keys=list(options.json_keys),
        dtype=token_dtype(tokenizer).name,
        eod_id=eod_id,
        bos_id=bos_id_or_error(tokenizer) if options.add_bos else None,
        append_eod=options.append_eod,
        skip_bad_lines=options.skip_bad_lines,
    )
    _WORKER.update(spec=options.tokenizer, tokenizer=tokenizer)  # forked workers reuse it
    return RunContext(options, tokenizer, setup, tokenizer_hash(tokenizer))


def process_files(
    context: RunContext, paths: list[Path], prefix: str, first_document: dict | None = None
) -> FilesResult:
    """Tokenise ``paths`` into finished outputs under ``prefix``; returns what they hold."""
    options, setup = context.options, context.setup
    writers = ShardWriters(prefix, setup.keys, options.shards, setup.dtype, first_document)
    progress = Progress(paths, options.progress, options.log_interval)
    empty = dict.fromkeys(setup.keys, 0)
    bad_lines = 0
    try:
        batches = iter_batches(paths, setup.keys, batch_lines=options.batch_lines)
        for result in ordered_map(options.tokenizer, setup, batches, options.workers):
            if result.error:
                raise InputError(result.error)
            for key in setup.keys:
                writers.add(key, result.tokens[key], result.lengths[key])
                empty[key] += result.empty[key]
            bad_lines += result.bad_lines
            progress.update(
                sum(len(v) for v in result.lengths.values()),
                sum(len(v) for v in result.tokens.values()),
                result.num_bytes,
            )
        result = FilesResult(writers.outputs(), empty, bad_lines, writers.documents)
        if first_document is None:  # a part of a partitioned run may be empty; the whole may not
            check_has_documents(paths, result, options.shards)
        writers.commit()
    except BaseException:
        writers.discard()
        raise
    finally:
        progress.close()
    result.rates = progress.rates()
    return result


def manifest_for(
    context: RunContext, inputs: list[dict], result: FilesResult, output: Output
) -> dict:
    """``SHARD.json``: how ``output`` was made (tokenizer, flags, inputs) and what it holds."""
    return {
        "created_by": "megatron-bliss preprocess",
        "tokenizer": context.options.tokenizer.describe(),
        "tokenizer_hash": context.tokenizer_hash,
        "vocab_size": len(context.tokenizer),
        "dtype": context.setup.dtype,
        "eod_id": context.setup.eod_id,
        "bos_id": context.setup.bos_id,
        "flags": context.options.output_flags(),
        "json_key": output.key,
        "shard": output.shard if context.options.shards > 1 else None,
        "inputs": inputs,
        "documents": output.documents,
        "tokens": output.tokens,
        "empty_documents": result.empty_documents[output.key],
        "bad_lines": result.bad_lines,
    }


def write_manifests(context: RunContext, inputs: list[dict], result: FilesResult) -> None:
    for output in result.outputs:
        atomic_write_json(output.path + ".json", manifest_for(context, inputs, result, output))
