"""DSIR: data selection by importance resampling on hashed n-gram features (Xie et al. 2023).

Two bag-of-n-grams models over ``num_buckets`` hashed unigram + bigram features are fitted, one
on the target set and one on the raw pool itself; a sequence's score is its log importance
weight ``log p_target(x) - log p_raw(x) = sum_f count_f(x) * (log p_target(f) - log p_raw(f))``.
Importance *resampling* is the shared selection rule's Gumbel-top-k (``--gumbel-temperature 1``
samples proportionally to the weights, as DSIR does); the scores here are deterministic.

Features come from decoded text (``features = "text"``: lower-cased words, as the paper) or
straight from token ids (``features = "tokens"``: no decoding, fastest). Hashing is a fixed
multiplicative hash of word CRC32s / token ids, so scores do not depend on Python's hash seed.
"""

from __future__ import annotations

import logging
import re
import zlib
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from megatron_bliss.errors import ConfigError
from megatron_bliss.selection.base import Selector

logger = logging.getLogger(__name__)

FEATURES = ("text", "tokens")
WORD_PATTERN = re.compile(r"\w+|[^\w\s]")
BIGRAM_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio constant: spreads bigram pairs


class NgramHasher:
    """Maps documents (text or token ids) to hashed unigram + bigram bucket indices."""

    def __init__(self, num_buckets: int, features: str, tokenizer=None):
        if features not in FEATURES:
            raise ConfigError(
                f"dsir features must be one of {', '.join(FEATURES)}, got '{features}'"
            )
        if features == "text" and tokenizer is None:
            raise ConfigError("dsir: features 'text' needs a tokenizer to decode the pool")
        if not 1 < num_buckets < 2**31:
            raise ConfigError(f"dsir num_buckets must be in (1, 2^31), got {num_buckets}")
        self.num_buckets = int(num_buckets)
        self.features = features
        self.tokenizer = tokenizer
        self._word_codes: dict[str, int] = {}

    def word_units(self, ids: np.ndarray) -> np.ndarray:
        """CRC32 codes of the lower-cased words of one decoded document, uint64."""
        text = self.tokenizer.decode(np.asarray(ids).tolist(), skip_special_tokens=True).lower()
        words = WORD_PATTERN.findall(text)
        cache = self._word_codes
        codes = [cache.get(word) for word in words]
        for i, code in enumerate(codes):
            if code is None:
                codes[i] = cache[words[i]] = zlib.crc32(words[i].encode()) + 1
        return np.asarray(codes, dtype=np.uint64)

    def hash_units(self, units: np.ndarray) -> np.ndarray:
        """Buckets of the unigrams and bigrams along the last axis of ``units`` (uint64)."""
        with np.errstate(over="ignore"):
            unigrams = units * BIGRAM_MULTIPLIER
            bigrams = (units[..., :-1] * BIGRAM_MULTIPLIER + units[..., 1:]) * BIGRAM_MULTIPLIER
        # the low bit tells unigram and bigram hashes apart before the modulo
        hashed = np.concatenate(
            [unigrams >> np.uint64(1) << np.uint64(1), bigrams | np.uint64(1)], axis=-1
        )
        return (hashed % np.uint64(self.num_buckets)).astype(np.int32)

    def batch_buckets(self, documents: list[np.ndarray]) -> list[np.ndarray]:
        """Bucket indices of each document; token features hash equal-length batches at once."""
        if self.features == "tokens":
            lengths = {len(doc) for doc in documents}
            if len(lengths) == 1:
                return list(self.hash_units(np.stack(documents).astype(np.uint64)))
            return [self.hash_units(np.asarray(doc, dtype=np.uint64)) for doc in documents]
        return [self.hash_units(self.word_units(doc)) for doc in documents]


def log_probabilities(counts: np.ndarray, pseudo_count: float) -> np.ndarray:
    """Smoothed log-probabilities of a bag-of-n-grams model from its total bucket counts."""
    smoothed = counts.astype(np.float64) + pseudo_count
    return np.log(smoothed) - np.log(smoothed.sum())


class DsirSelector(Selector):
    """Importance weights of pool sequences under target vs. raw hashed n-gram models."""

    name = "dsir"
    uses_target_model = False  # n-gram models of the target set and the pool only

    @dataclass
    class Config:
        num_buckets: int = 10000
        """Hashed feature buckets (the paper's 10k)."""
        features: str = "text"
        """``text`` (decoded, lower-cased words, as the paper) or ``tokens`` (token ids)."""
        pseudo_count: float = 1.0
        """Add-k smoothing of both n-gram models."""
        batch_size: int = 1024
        """Pool sequences hashed per batch."""
        cache_bytes: int = 2 * 1024**3
        """Keep the pool's bucket arrays in memory up to this size (else hash the pool twice)."""

    def __init__(self, config, context):
        super().__init__(config, context)
        self.log_ratio: np.ndarray | None = None
        self._hasher: NgramHasher | None = None
        self._cache: list[np.ndarray] | None = None

    def _pool_batches(self, desc: str):
        """Yield the bucket arrays of the pool, batch by batch (from the cache when it holds them)."""
        if self._cache is not None:
            yield self._cache
            return
        pool, size = self.context.pool, self.config.batch_size
        for start in tqdm(range(0, len(pool), size), desc=desc, disable=len(pool) < 20 * size):
            chunk = pool.batch(np.arange(start, min(start + size, len(pool))))
            yield self._hasher.batch_buckets(list(chunk[:, : pool.seq_length]))

    def _raw_counts(self) -> np.ndarray:
        """Bucket totals over the pool; caches the bucket arrays when they fit ``cache_bytes``."""
        pool = self.context.pool
        units_per_sequence = 2 * pool.seq_length  # upper bound for tokens; text has fewer words
        keep = len(pool) * units_per_sequence * 4 <= self.config.cache_bytes
        counts = np.zeros(self.config.num_buckets, dtype=np.float64)
        kept: list[np.ndarray] = []
        for batch in self._pool_batches("dsir raw model"):
            for buckets in batch:
                counts += np.bincount(buckets, minlength=self.config.num_buckets)
            if keep:
                kept.extend(batch)
        self._cache = kept if keep else None
        return counts

    def fit(self) -> None:
        """Fit the target and raw n-gram models (raw = the pool itself, as in DSIR)."""
        if self.context.target_set is None:
            raise ConfigError("dsir: needs a target set (--target-data)")
        self._hasher = NgramHasher(
            self.config.num_buckets, self.config.features, self.context.tokenizer
        )
        target_docs = [example.input_ids for example in self.context.target_set.examples]
        target_counts = np.zeros(self.config.num_buckets, dtype=np.float64)
        for buckets in self._hasher.batch_buckets(target_docs):
            target_counts += np.bincount(buckets, minlength=self.config.num_buckets)
        raw_counts = self._raw_counts()
        self.log_ratio = log_probabilities(
            target_counts, self.config.pseudo_count
        ) - log_probabilities(raw_counts, self.config.pseudo_count)
        logger.info(
            "dsir: %d target and %d raw n-grams in %d buckets",
            target_counts.sum(),
            raw_counts.sum(),
            self.config.num_buckets,
        )

    def score(self) -> np.ndarray:
        """Log importance weight of every pool sequence, float32."""
        if self.log_ratio is None:
            self.fit()
        scores = np.zeros(len(self.context.pool), dtype=np.float64)
        row = 0
        for batch in self._pool_batches("dsir score"):
            for buckets in batch:
                scores[row] = self.log_ratio[buckets].sum()
                row += 1
        self._cache = None
        return scores.astype(np.float32)
