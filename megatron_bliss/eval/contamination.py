"""Contamination check: do evaluation or target-set documents share 13-grams with the data?

The n-grams are lower-cased whitespace-word 13-grams (the GPT-3 / lm-eval decontamination
convention). Each n-gram is reduced to one 64-bit polynomial hash of its word hashes, computed
with vectorised numpy, and the pool's hashes are kept as one sorted array, so a pool of millions
of words is indexed in seconds and a document is checked with ``np.isin``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from megatron_bliss.errors import InputError

NGRAM = 13
_BASE = np.uint64(1_000_003)


def _word_hashes(text: str) -> np.ndarray:
    words = text.lower().split()
    # Python's str hash is salted per process, which is fine: all hashes live in one process.
    return np.fromiter((hash(word) for word in words), dtype=np.int64, count=len(words)).view(
        np.uint64
    )


def ngram_hashes(text: str, n: int = NGRAM) -> np.ndarray:
    """64-bit hashes of every word n-gram of ``text`` (empty when it has fewer than n words)."""
    words = _word_hashes(text)
    if len(words) < n:
        return np.zeros(0, dtype=np.uint64)
    count = len(words) - n + 1
    hashes = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(n):
            hashes = hashes * _BASE + words[offset : offset + count]
    return hashes


def ngram_index(texts: Iterable[str], n: int = NGRAM) -> np.ndarray:
    """Sorted unique n-gram hashes of a collection of texts (the "hashed n-gram set")."""
    parts = [ngram_hashes(text, n) for text in texts]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)


def contains(index: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Membership of ``hashes`` in the sorted unique ``index`` (binary search, no re-sorting)."""
    if len(index) == 0:
        return np.zeros(len(hashes), dtype=bool)
    positions = np.searchsorted(index, hashes).clip(max=len(index) - 1)
    return index[positions] == hashes


def contaminated_share(documents: list[str], index: np.ndarray, n: int = NGRAM) -> float | None:
    """Share of ``documents`` with at least one n-gram in ``index`` (None without documents).

    Documents shorter than n words cannot match and count as clean. All documents' n-grams are
    looked up in one vectorised binary search over the sorted index.
    """
    if not documents:
        return None
    per_document = [ngram_hashes(text, n) for text in documents]
    lengths = np.array([len(hashes) for hashes in per_document], dtype=np.int64)
    if lengths.sum() == 0:
        return 0.0
    found = contains(index, np.concatenate(per_document))
    owners = np.repeat(np.arange(len(documents)), lengths)
    contaminated = np.zeros(len(documents), dtype=bool)
    contaminated[owners[found]] = True
    return float(contaminated.mean())


def document_text(row: dict) -> str:
    """Every string in a task or target-set row, joined: question, passage, choices, answers."""
    pieces: list[str] = []

    def visit(value) -> None:
        if isinstance(value, str):
            pieces.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)

    visit(row)
    return " ".join(pieces)


def read_documents(path: str | Path, max_documents: int | None = None) -> list[str]:
    """Texts of a jsonl file of task or target-set rows."""
    documents = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                documents.append(document_text(json.loads(line)))
            except json.JSONDecodeError as error:
                raise InputError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
            if max_documents is not None and len(documents) >= max_documents:
                break
    return documents


def evenly_spaced(indices: np.ndarray, limit: int | None) -> np.ndarray:
    """At most ``limit`` of ``indices``, spread evenly (the whole array when it is small)."""
    if limit is None or len(indices) <= limit:
        return indices
    return indices[np.linspace(0, len(indices) - 1, limit).round().astype(np.int64)]


def pool_texts(pool, tokenizer, indices: np.ndarray, batch: int = 256) -> list[str]:
    """Decoded text of the pool's sequences ``indices`` (a ``SequencePool``)."""
    texts: list[str] = []
    for start in range(0, len(indices), batch):
        token_batch = pool.batch(indices[start : start + batch])
        texts.extend(tokenizer.batch_decode(token_batch.tolist(), skip_special_tokens=True))
    return texts
