"""Selectors with their shipped defaults rank planted useful sequences above useless ones.

The pool mixes real documents with two kinds of useless text of the same length (uniform random
tokens, and one boilerplate sentence repeated); the target set is held-out real documents. A
tiny target is warmed up on the pool first (a real run selects with a warm target). AUC is
"useful ranked above useless" over pure sequences (benchmarks/planted_pool_auc.py is the large
form of this check).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from megatron_bliss.data.pool import SequencePool
from megatron_bliss.data.target_set import TargetSet
from megatron_bliss.models.presets import build_model
from megatron_bliss.selection.base import SelectionContext
from megatron_bliss.selection.proxy import freeze, warmup_lm

SEQ = 32
BOILERPLATE = "Click here to subscribe to our newsletter and save 50% today! "


def auc(scores: np.ndarray, useful: np.ndarray) -> float:
    """P(score of a useful sequence > score of a useless one), ties counted half."""
    good, bad = scores[useful], scores[~useful]
    greater = (good[:, None] > bad[None, :]).mean()
    ties = (good[:, None] == bad[None, :]).mean()
    return float(greater + 0.5 * ties)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tokenizer, corpus_texts):
    from tests.conftest import build_shard

    rng = np.random.default_rng(0)
    eod = tokenizer.eos_token_id
    documents, kinds = [], []
    for text in corpus_texts[:90]:
        ids = tokenizer.encode(text) + [eod]
        documents.append(ids)
        kinds.append(0)
        if len(documents) % 2:
            noise = rng.integers(2, len(tokenizer), size=len(ids)).tolist()
            documents.append(noise)
        else:
            filler = tokenizer.encode(BOILERPLATE * (len(ids) // 8 + 1))[: len(ids)]
            documents.append(filler)
        kinds.append(1)
    folder = tmp_path_factory.mktemp("planted")
    prefix = build_shard(folder / "planted_text_document", documents)
    token_kind = np.concatenate([np.full(len(d), k) for d, k in zip(documents, kinds)])
    pool = SequencePool(prefix, SEQ)
    spans = token_kind[: len(pool) * SEQ].reshape(len(pool), SEQ)
    pure = (spans.mean(1) == 0) | (spans.mean(1) == 1)
    target = folder / "target.jsonl"
    target.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus_texts[90:]))
    target_set = TargetSet.from_jsonl(target, tokenizer, "documents", SEQ * 2)
    torch.manual_seed(0)
    model = build_model("pythia-tiny", len(tokenizer), SEQ + 1, attn_implementation="sdpa")
    warmup_lm(model, pool, steps=60, batch_size=16, lr=3e-3, seed=1, device=torch.device("cpu"))
    return {"pool": pool, "useful": spans[pure].mean(1) == 0, "pure": pure,
            "target_set": target_set, "target": freeze(model), "tokenizer": tokenizer}  # fmt: skip


def run_selector(planted, method: str, tmp_path, **settings) -> float:
    from megatron_bliss.selection.registry import get_selector_class

    selector_class = get_selector_class(method)
    context = SelectionContext(
        pool=planted["pool"], run_dir=tmp_path, target_set=planted["target_set"],
        target_model=planted["target"], tokenizer=planted["tokenizer"], seed=0,
        model_preset="pythia-tiny",
    )  # fmt: skip
    selector = selector_class(selector_class.Config(**settings), context)
    selector.fit()
    scores = selector.score()
    return auc(scores[planted["pure"]], planted["useful"])


def test_bliss_default_ranks_useful_text_above_planted_noise(planted, tmp_path):
    value = run_selector(
        planted, "bliss", tmp_path, proxy_init="target", outer_steps=40, batch_size=8,
        upper_batch_size=32, target_batch_size=8, lr_proxy=1e-4, lr_score=1e-3,
        diagnostic_sequences=0,
    )  # fmt: skip
    assert value > 0.9


def test_bliss_regression_head_ranks_useful_text_above_planted_noise(planted, tmp_path):
    value = run_selector(
        planted, "bliss", tmp_path, proxy_init="target", outer_steps=40, batch_size=8,
        upper_batch_size=32, target_batch_size=8, lr_proxy=1e-4, lr_score=1e-3,
        diagnostic_sequences=0, score_head="regression",
    )  # fmt: skip
    assert value > 0.9


def test_reducible_ranks_useful_text_above_planted_noise(planted, tmp_path):
    value = run_selector(planted, "reducible", tmp_path, steps=20, batch_size=8)
    assert value > 0.9
