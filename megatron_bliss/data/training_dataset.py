"""The training dataset: shuffled, seeded, blended draws of sequence-pool sequences.

Each sample is one sequence of a source's ``SequencePool`` (docs/formats.md, "The sequence view of a dataset"), so a
``selection.npy`` restricts training to exactly the sequences selection kept. megatron-core's
``GPTDataset`` shuffles documents before cutting samples, which would break that meaning, so only
its blending helper is reused here.

Sample ``i`` is a pure function of ``(sources, seq_length, num_samples, seed)``; in fact it does
not even depend on ``num_samples`` (blending is greedy and online, epochs are shuffled
independently), so training resumes from a global "consumed samples" counter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megatron_bliss.data.pool import SequencePool
from megatron_bliss.errors import ConfigError, InputError, MissingFileError
from megatron_bliss.utils.io import atomic_path

logger = logging.getLogger(__name__)


@dataclass
class DataSource:
    prefix: str  # indexed shard prefix (no extension)
    weight: float = 1.0  # blending weight
    selection: str | None = None  # path to a selection.npy restricting the shard's pool sequences


def read_selection(path: str | Path, seq_length: int, num_sequences: int) -> np.ndarray:
    """Sorted int64 pool indices of a ``selection.npy``, checked against its ``selection.json``."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path}: selection file not found")
    meta_path = path.with_suffix(".json")
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        selected_length = meta.get("seq_length")
        if selected_length is not None and int(selected_length) != seq_length:
            raise InputError(
                f"{path}: selection was made with seq_length {selected_length}, "
                f"but this run uses seq_length {seq_length}"
            )
        pool_size = meta.get("num_sequences")
        if pool_size is not None and int(pool_size) != num_sequences:
            raise InputError(
                f"{path}: selection was made on a pool of {pool_size} sequences "
                f"({meta.get('data_prefix')}), but this shard has {num_sequences}: another shard"
            )
    else:
        logger.warning("%s: no selection.json beside it; seq_length not checked", path)
    try:
        indices = np.asarray(np.load(path), dtype=np.int64).reshape(-1)
    except (ValueError, OSError, TypeError) as error:  # not an .npy of integers
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{path}: not a selection .npy ({reason})") from None
    if len(indices) == 0:
        raise InputError(f"{path}: selection is empty")
    if indices.min() < 0 or indices.max() >= num_sequences:
        raise InputError(
            f"{path}: selection indices must lie in [0, {num_sequences}) "
            f"(the shard's pool size at seq_length {seq_length})"
        )
    return indices


def check_vocabulary(pool: SequencePool, vocab_size: int) -> None:
    """Refuse a shard whose token ids do not fit the model's vocabulary (one line)."""
    if not np.issubdtype(pool.dtype, np.integer):
        raise InputError(f"{pool.prefix}: token dtype {pool.dtype} is not an integer type")
    if np.iinfo(pool.dtype).max < vocab_size:
        return  # no id the dtype can hold can reach vocab_size
    largest = pool.max_token_id()
    if largest >= vocab_size:
        raise InputError(
            f"{pool.prefix}: token id {largest} does not fit the model's vocabulary of "
            f"{vocab_size} (was the shard made with another tokenizer?)"
        )


def blending_indices(weights: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(source of each sample, its rank within that source), as Megatron's blended dataset.

    Greedy: each sample goes to the source furthest below its weight's share so far.
    """
    weights = np.asarray(weights, dtype=np.float64)
    source_index = np.zeros(size, dtype=np.int16)
    source_sample_index = np.zeros(size, dtype=np.int64)
    try:
        from megatron.core.datasets import helpers
    except ImportError:  # compiled helpers unavailable: same algorithm in numpy
        logger.warning("megatron-core helpers unavailable; blending in numpy (slower)")
        counts = np.zeros(len(weights), dtype=np.int64)
        for sample in range(size):
            chosen = int(np.argmax(weights * max(sample, 1) - counts))
            source_index[sample] = chosen
            source_sample_index[sample] = counts[chosen]
            counts[chosen] += 1
        return source_index, source_sample_index
    helpers.build_blending_indices(
        source_index, source_sample_index, weights, len(weights), size, False
    )
    return source_index, source_sample_index


def epoch_order(candidates: np.ndarray, needed: int, seed: int, source: int) -> np.ndarray:
    """The first ``needed`` sequence ids of a source: one fresh permutation per epoch."""
    epochs = max(1, -(-needed // len(candidates)))
    orders = [
        np.random.default_rng([seed, source, epoch]).permutation(candidates)
        for epoch in range(epochs)
    ]
    return np.concatenate(orders)[:needed]


class TrainingDataset:
    """``num_samples`` int64 samples of ``seq_length + 1`` tokens, blended across sources.

    Attributes: ``epochs`` (prefix -> passes over its candidate sequences the run needs),
    ``sample_index`` (int64 array ``(num_samples, 2)``: source, pool sequence).
    """

    def __init__(
        self,
        sources: list[DataSource],
        seq_length: int,
        num_samples: int,
        seed: int = 1234,
        vocab_size: int | None = None,
        cache_dir: str | None = None,
        wait_for_cache: Callable[[Path], None] | None = None,
    ):
        """``wait_for_cache(path)``, for processes that read the index another one builds: called
        when the cache file is not there yet, returns once it is (or raises)."""
        if not sources:
            raise ValueError("training dataset needs at least one data source")
        if num_samples < 0:
            raise ValueError(f"num_samples must be non-negative, got {num_samples}")
        self.sources = list(sources)
        self.seq_length = int(seq_length)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.pools = [SequencePool(source.prefix, self.seq_length) for source in self.sources]
        if vocab_size is not None:
            for pool in self.pools:
                check_vocabulary(pool, int(vocab_size))
        self.candidates = [self._candidates(s, p) for s, p in zip(self.sources, self.pools)]
        self.weights = self._normalised_weights()
        self.sample_index = self._load_or_build(cache_dir, wait_for_cache)
        self.epochs = self._count_epochs()
        for name, epochs in self.epochs.items():
            logger.info("training data %s: %d epoch(s) over its sequences", name, epochs)

    def _candidates(self, source: DataSource, pool: SequencePool) -> np.ndarray:
        if source.selection is None:
            if pool.num_sequences == 0:
                raise InputError(
                    f"{source.prefix}: shard has no full sequence of {self.seq_length} tokens"
                )
            return np.arange(pool.num_sequences, dtype=np.int64)
        return read_selection(source.selection, self.seq_length, pool.num_sequences)

    def _normalised_weights(self) -> np.ndarray:
        weights = np.asarray([float(s.weight) for s in self.sources], dtype=np.float64)
        if (weights < 0).any() or not np.isfinite(weights).all() or weights.sum() <= 0:
            raise ConfigError(
                f"blending weights must be non-negative with a positive sum: {weights}"
            )
        return weights / weights.sum()

    def _build(self) -> np.ndarray:
        source_of, rank_in_source = blending_indices(self.weights, self.num_samples)
        sample_index = np.zeros((self.num_samples, 2), dtype=np.int64)
        sample_index[:, 0] = source_of
        for source, candidates in enumerate(self.candidates):
            mask = source_of == source
            needed = int(rank_in_source[mask].max()) + 1 if mask.any() else 0
            if needed:
                order = epoch_order(candidates, needed, self.seed, source)
                sample_index[mask, 1] = order[rank_in_source[mask]]
        return sample_index

    def cache_key(self) -> str:
        """Hash of everything the index depends on (shard sizes and selection contents too)."""
        digest = hashlib.sha256()
        parts = [self.seq_length, self.num_samples, self.seed, self.weights.tolist()]
        for source, candidates in zip(self.sources, self.candidates):
            sizes = [os.path.getsize(source.prefix + suffix) for suffix in (".idx", ".bin")]
            parts.append([os.path.abspath(source.prefix), sizes])
            digest.update(candidates.tobytes())
        digest.update(json.dumps(parts).encode())
        return digest.hexdigest()[:20]

    def _load_or_build(self, cache_dir: str | None, wait_for_cache=None) -> np.ndarray:
        if cache_dir is None:
            return self._build()
        path = Path(cache_dir) / f"training_index_{self.cache_key()}.npy"
        if wait_for_cache is not None and not path.exists():
            wait_for_cache(path)
        if path.exists():
            index = np.load(path, mmap_mode="r")
            if index.shape == (self.num_samples, 2):
                logger.info("training index read from %s", path)
                return index
        index = self._build()
        with atomic_path(path) as temporary, open(temporary, "wb") as handle:
            np.save(handle, index)
        logger.info("training index cached at %s", path)
        return index

    def _count_epochs(self) -> dict[str, int]:
        counts = np.bincount(self.sample_index[:, 0], minlength=len(self.sources))
        epochs: dict[str, int] = {}
        for number, (source, candidates) in enumerate(zip(self.sources, self.candidates)):
            name = source.prefix if source.prefix not in epochs else f"{source.prefix}#{number}"
            epochs[name] = int(-(-int(counts[number]) // len(candidates)))
        return epochs

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> np.ndarray:
        """Sample ``index``: int64 tokens of shape ``(seq_length + 1,)``."""
        index = int(index)
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} out of range for {self.num_samples} samples")
        source, sequence = self.sample_index[index]
        return self.pools[int(source)][int(sequence)]
