"""DSIR: hashed n-gram importance weights rank target-like text above random tokens."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_bliss.data.pool import SequencePool
from megatron_bliss.data.target_set import TargetSet, encode_example
from megatron_bliss.selection.base import SelectionContext
from megatron_bliss.selection.dsir import DsirSelector, NgramHasher
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


def test_hashed_features_are_unigrams_and_bigrams():
    hasher = NgramHasher(50, "tokens")
    doc = np.array([5, 9, 5, 9, 7])
    buckets = hasher.batch_buckets([doc])[0]
    assert len(buckets) == 2 * len(doc) - 1  # five unigrams, four bigrams
    assert buckets[0] == buckets[2] and buckets[5] == buckets[7]  # unigram 5, bigram (5, 9)
    assert buckets[5] != buckets[6]  # bigrams (5, 9) and (9, 5) differ


def test_dsir_scores_are_the_log_ratio_of_target_and_raw_ngram_models(planted, tokenizer, tmp_path):
    """Score of a pool sequence = sum over its hashed n-grams of log p_target - log p_raw, the two
    add-k smoothed bag-of-n-grams models fitted on the target set and on the pool itself."""
    pool, target = planted
    buckets, k = 97, 0.5
    selector = make_selector(
        planted, tokenizer, tmp_path, features="tokens", num_buckets=buckets, pseudo_count=k
    )
    scores = selector.score()
    hasher = NgramHasher(buckets, "tokens")

    def log_model(documents):
        counts = np.zeros(buckets)
        for document in documents:
            np.add.at(counts, hasher.batch_buckets([np.asarray(document)])[0], 1)
        return np.log((counts + k) / (counts.sum() + k * buckets))

    sequences = [pool[i][:SEQ] for i in range(len(pool))]
    ratio = log_model([example.input_ids for example in target.examples]) - log_model(sequences)
    expected = [ratio[hasher.batch_buckets([s])[0]].sum() for s in sequences]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-4)
    assert np.ptp(scores) > 1.0  # the sequences differ: a constant score would pass nothing


def test_dsir_needs_target_set(planted, tokenizer, tmp_path):
    pool, _ = planted
    context = SelectionContext(pool=pool, run_dir=tmp_path, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="target set"):
        DsirSelector(DsirSelector.Config(), context).score()
    with pytest.raises(ValueError, match="features"):
        NgramHasher(10, "chars")
