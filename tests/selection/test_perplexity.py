"""Perplexity filtering: a model trained on text ranks text above random tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_bliss.data.pool import SequencePool
from megatron_bliss.models.flops import pass_flops
from megatron_bliss.models.presets import build_model
from megatron_bliss.selection.base import SelectionContext
from megatron_bliss.selection.perplexity import PerplexitySelector, loss_to_score, pool_losses
from megatron_bliss.selection.proxy import sequence_losses
from tests.conftest import build_shard

SEQ = 32


@pytest.fixture(scope="module")
def pool_and_model(tmp_path_factory, tokenizer, corpus_texts):
    """Even sequences: one sentence repeated; odd: random tokens. Model trained on the sentence."""
    rng = np.random.default_rng(0)
    phrase = tokenizer.encode(corpus_texts[0])[:8]
    repeated = (phrase * SEQ)[:SEQ]
    docs = [
        repeated if i % 2 == 0 else rng.integers(2, len(tokenizer), SEQ).tolist() for i in range(21)
    ]
    pool = SequencePool(build_shard(tmp_path_factory.mktemp("ppl") / "pool", docs), SEQ)
    torch.manual_seed(0)
    model = build_model("pythia-tiny", vocab_size=len(tokenizer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = torch.tensor([(phrase * (SEQ + 8))[i : i + SEQ + 1] for i in range(8)])
    for _ in range(30):
        optimizer.zero_grad()
        sequence_losses(model, batch).mean().backward()
        optimizer.step()
    return pool, model.eval()


def run(pool_and_model, tmp_path, **overrides) -> np.ndarray:
    pool, model = pool_and_model
    context = SelectionContext(pool=pool, run_dir=tmp_path, target_model=model)
    selector = PerplexitySelector(PerplexitySelector.Config(**overrides), context)
    scores = selector.score()
    one_pass = pass_flops(model.config, len(pool) * pool.seq_length, pool.seq_length)
    assert selector.flops == {"training": 0.0, "scoring": pytest.approx(one_pass)}
    return scores


def test_low_band_ranks_repeated_text_above_random_tokens(pool_and_model, tmp_path):
    scores = run(pool_and_model, tmp_path, batch_size=4)
    pool, _ = pool_and_model
    assert scores.shape == (len(pool),) and scores.dtype == np.float32
    assert np.isfinite(scores).all()
    assert scores[0::2].min() > scores[1::2].max()
    np.testing.assert_array_equal(scores, run(pool_and_model, tmp_path, batch_size=7))


def test_losses_match_a_manual_forward(pool_and_model):
    pool, model = pool_and_model
    losses = pool_losses(model, pool, torch.device("cpu"), batch_size=3)
    tokens = torch.from_numpy(pool[5])
    with torch.no_grad():
        logits = model(input_ids=tokens[None, :-1]).logits[0]
    manual = torch.nn.functional.cross_entropy(logits, tokens[1:]).item()
    assert losses[5] == pytest.approx(manual, rel=1e-5)


def test_middle_band_prefers_the_median():
    losses = np.array([1.0, 2.0, 3.0, 10.0, 2.5])
    scores = loss_to_score(losses, "middle")
    assert scores.argmax() == 4 and scores.argmin() == 3
    np.testing.assert_allclose(scores, -np.abs(losses - 2.5))
    with pytest.raises(ValueError, match="band"):
        loss_to_score(losses, "high")


def test_needs_a_target_model(pool_and_model, tmp_path):
    pool, _ = pool_and_model
    context = SelectionContext(pool=pool, run_dir=tmp_path)
    with pytest.raises(ValueError, match="target model"):
        PerplexitySelector(PerplexitySelector.Config(), context).score()
