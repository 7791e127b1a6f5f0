"""DSIR: hashed n-gram importance weights rank target-like text above random tokens."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_bliss.data.pool import SequencePool
from megatron_bliss.data.target_set import TargetSet, encode_example
from megatron_bliss.selection.base import SelectionContext
from megatron_bliss.selection.dsir import DsirSelector, NgramHasher, log_probabilities
from tests.conftest import build_shard

SEQ = 32


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tokenizer, corpus_texts):
    """A pool alternating corpus-text sequences (even) and random-token sequences (odd)."""
    rng = np.random.default_rng(0)
    text_ids = [t for text in corpus_texts[:60] for t in tokenizer.encode(text)]
    docs = []
    for i in range(40):
        if i % 2 == 0:
            docs.append(text_ids[i * SEQ : (i + 1) * SEQ])
        else:
            docs.append(rng.integers(2, len(tokenizer), SEQ).tolist())
    prefix = build_shard(tmp_path_factory.mktemp("dsir") / "pool", docs)
    pool = SequencePool(prefix, SEQ)
    examples = [encode_example(tokenizer, "", text, 256) for text in corpus_texts[60:100]]
    return pool, TargetSet(examples)


def make_selector(planted, tokenizer, tmp_path, **overrides):
    pool, target = planted
    context = SelectionContext(pool=pool, run_dir=tmp_path, target_set=target, tokenizer=tokenizer)
    return DsirSelector(DsirSelector.Config(**overrides), context)


@pytest.mark.parametrize("features", ["text", "tokens"])
def test_dsir_ranks_target_like_text_first(planted, tokenizer, tmp_path, features):
    scores = make_selector(planted, tokenizer, tmp_path, features=features).score()
    pool, _ = planted
    assert scores.shape == (len(pool),) and scores.dtype == np.float32
    assert np.isfinite(scores).all()
    text_like, random_tokens = scores[0::2], scores[1::2]
    pairs_won = (text_like[:, None] > random_tokens[None, :]).mean()  # ROC AUC
    assert pairs_won > 0.95


def test_dsir_is_deterministic(planted, tokenizer, tmp_path):
    first = make_selector(planted, tokenizer, tmp_path, num_buckets=997).score()
    second = make_selector(planted, tokenizer, tmp_path, num_buckets=997, cache_bytes=0).score()
    np.testing.assert_allclose(first, second, rtol=1e-6)


def test_dsir_score_is_count_weighted_log_ratio(tokenizer):
    hasher = NgramHasher(50, "tokens")
    doc = np.array([5, 9, 5, 9, 7])
    buckets = hasher.batch_buckets([doc])[0]
    assert len(buckets) == 2 * len(doc) - 1  # five unigrams, four bigrams
    target = log_probabilities(np.bincount(buckets, minlength=50), 1.0)
    raw = log_probabilities(np.ones(50), 1.0)
    expected = sum(target[b] - raw[b] for b in buckets)
    assert np.isclose((target - raw)[buckets].sum(), expected)
    # repeated bigram (5, 9) hashes to one bucket twice
    assert np.bincount(buckets).max() >= 2


def test_dsir_needs_target_set(planted, tokenizer, tmp_path):
    pool, _ = planted
    context = SelectionContext(pool=pool, run_dir=tmp_path, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="target set"):
        DsirSelector(DsirSelector.Config(), context).score()
    with pytest.raises(ValueError, match="features"):
        NgramHasher(10, "chars")
