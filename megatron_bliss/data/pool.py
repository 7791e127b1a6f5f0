"""The sequence pool: a finished shard viewed as fixed-length sequences.

This is the unit that selection scores and keeps, and that training draws from, so a
``selection.npy`` means the same thing everywhere (docs/formats.md, "The sequence view of a dataset"):
sequence ``i`` holds tokens ``[i*L, (i+1)*L + 1)`` of the shard's documents concatenated in order
(the extra token is the last label); a trailing partial sequence is dropped.
"""

from __future__ import annotations

import logging
import os
import struct
import warnings
from pathlib import Path

import numpy as np

from megatron_bliss.errors import ConfigError, InputError, MissingFileError

MAX_ID_CHUNK = 1 << 24  # tokens per chunk when scanning a shard for its largest id


def require_indexed_files(prefix: str, what: str = "indexed dataset file", hint: str = "") -> None:
    """One line naming the missing ``.bin`` or ``.idx`` of a dataset prefix (``hint``: how to
    make it), before anything slower looks at it."""
    for suffix in (".bin", ".idx"):
        if not os.path.isfile(prefix + suffix):
            raise MissingFileError(
                f"{prefix}{suffix}: {what} not found" + (f" ({hint})" if hint else "")
            )


INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequences, documents


def check_index_file(prefix: str) -> None:
    """One line naming a ``.idx`` that is not a complete MMIDIDX index. megatron-core's reader
    fails on one with numpy's ``buffer is smaller than requested size`` (no file named) and then
    a second traceback from its ``__del__``; the header says how long the file must be."""
    path = prefix + ".idx"
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        header = handle.read(INDEX_HEADER.size)
    if len(header) < INDEX_HEADER.size or not header.startswith(INDEX_MAGIC):
        raise InputError(f"{path}: not a Megatron indexed dataset index (no MMIDIDX header)")
    _, _, _, sequences, documents = INDEX_HEADER.unpack(header)
    expected = INDEX_HEADER.size + 12 * sequences + 8 * documents  # int32 + int64, int64
    if size < expected:
        raise InputError(
            f"{path}: truncated index ({size} bytes; its header describes {sequences} sequences "
            f"in {expected} bytes); rebuild the dataset"
        )


def _open_indexed(prefix: str):
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    logging.getLogger("megatron.core").setLevel(logging.WARNING)  # per-open INFO chatter
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    require_indexed_files(prefix)
    check_index_file(prefix)
    return IndexedDataset(prefix, mmap=True)


class SequencePool:
    """Random access to the fixed-length sequences of one indexed shard.

    The shard is opened with megatron-core's ``IndexedDataset`` (which validates the index); the
    tokens are then read through one flat memory map, since the builder writes documents back to
    back in order and a sequence may span document boundaries.
    """

    def __init__(self, prefix: str | Path, seq_length: int):
        if seq_length < 1:
            raise ConfigError(f"seq_length must be positive, got {seq_length}")
        self.prefix = str(prefix)
        self.seq_length = int(seq_length)
        self.indexed = _open_indexed(self.prefix)
        self.dtype = np.dtype(self.indexed.index.dtype)
        self.document_lengths = np.asarray(self.indexed.sequence_lengths, dtype=np.int64)
        self.num_tokens = int(self.document_lengths.sum())
        self._check_contiguous()
        self.tokens = (
            np.memmap(self.prefix + ".bin", dtype=self.dtype, mode="r", shape=(self.num_tokens,))
            if self.num_tokens
            else np.zeros(0, dtype=self.dtype)
        )
        self.num_sequences = max(0, (self.num_tokens - 1) // self.seq_length)
        self._max_token_id: int | None = None
        self._document_ends: np.ndarray | None = None

    def _check_contiguous(self) -> None:
        pointers = np.asarray(self.indexed.index.sequence_pointers, dtype=np.int64)
        if len(pointers) == 0:
            return
        expected = (
            np.concatenate([[0], np.cumsum(self.document_lengths[:-1])]) * self.dtype.itemsize
        )
        bin_size = os.path.getsize(self.prefix + ".bin")
        if bin_size < self.num_tokens * self.dtype.itemsize:
            raise InputError(
                f"{self.prefix}.bin: truncated ({bin_size} bytes; the index describes "
                f"{self.num_tokens * self.dtype.itemsize}); rebuild the dataset"
            )
        if (
            not np.array_equal(pointers, expected)
            or bin_size != self.num_tokens * self.dtype.itemsize
        ):
            raise InputError(f"{self.prefix}.bin: documents are not stored contiguously in order")

    def __len__(self) -> int:
        return self.num_sequences

    def require_sequences(self) -> SequencePool:
        """Self, or one clear error when the shard is shorter than one sequence (scoring or
        selecting from an empty pool would only fail later, less clearly)."""
        if self.num_sequences == 0:
            raise InputError(
                f"{self.prefix}: {self.num_tokens} tokens hold no sequence of length "
                f"{self.seq_length} (a sequence needs {self.seq_length + 1} tokens)"
            )
        return self

    def __getitem__(self, index: int) -> np.ndarray:
        """Sequence ``index`` as int64 tokens of length ``seq_length + 1``."""
        if not 0 <= index < self.num_sequences:
            raise IndexError(f"sequence {index} out of range for {self.num_sequences} sequences")
        start = index * self.seq_length
        return np.asarray(self.tokens[start : start + self.seq_length + 1], dtype=np.int64)

    def batch(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Stack sequences into an int64 array of shape ``(len(indices), seq_length + 1)``."""
        return (
            np.stack([self[int(i)] for i in indices])
            if len(indices)
            else np.zeros((0, self.seq_length + 1), dtype=np.int64)
        )

    def document_tail(self, document: int, length: int, eod: int | None = None) -> np.ndarray:
        """The last ``length`` tokens of document ``document`` (int64), without its trailing
        ``eod`` token: the shape a ``documents`` target example of that document would have."""
        if not 0 <= document < len(self.document_lengths):
            raise IndexError(f"document {document} out of range for {len(self.document_lengths)}")
        if self._document_ends is None:
            self._document_ends = np.cumsum(self.document_lengths)
        stop = int(self._document_ends[document])
        start = stop - int(self.document_lengths[document])
        if eod is not None and stop > start and int(self.tokens[stop - 1]) == eod:
            stop -= 1
        return np.asarray(self.tokens[max(start, stop - length) : stop], dtype=np.int64)

    def max_token_id(self) -> int:
        """Largest token id (-1 when empty), scanned once in chunks so memory stays bounded."""
        if self._max_token_id is None:
            largest = -1
            for start in range(0, self.num_tokens, MAX_ID_CHUNK):
                largest = max(largest, int(self.tokens[start : start + MAX_ID_CHUNK].max()))
            self._max_token_id = largest
        return self._max_token_id
