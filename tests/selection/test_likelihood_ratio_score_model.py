"""The likelihood-ratio score model (``bliss.score_head: likelihood_ratio``) against its definition,
its first-order link to the alignment ``g_i . z``, its save/load round trip and the score CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megatron_bliss.models.presets import build_model
from megatron_bliss.selection.score_model import LikelihoodRatioScoreModel, load_score_model


@pytest.fixture
def lm_and_inputs():
    torch.manual_seed(0)
    lm = build_model("pythia-tiny", 512, 33, attn_implementation="sdpa").double()
    return lm, torch.randint(0, 512, (4, 16))


def explicit_ce(model, input_ids):
    logits = model(input_ids=input_ids[:, :-1]).logits
    ce = F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
    return ce.mean(1)


def test_logits_start_at_zero_and_are_scale_times_the_loss_ratio(lm_and_inputs):
    lm, inputs = lm_and_inputs
    model = LikelihoodRatioScoreModel.from_causal_lm(lm, scale=3.0)
    torch.testing.assert_close(model.logits(inputs), torch.zeros(4, dtype=torch.float64))
    with torch.no_grad():
        for param in model.lm.parameters():
            param.add_(0.01 * torch.randn_like(param))
    expected = 3.0 * (explicit_ce(lm, inputs) - explicit_ce(model.lm, inputs))
    torch.testing.assert_close(model.logits(inputs), expected)


def test_a_small_step_moves_each_logit_by_minus_scale_times_g_i_dot_step(lm_and_inputs):
    lm, inputs = lm_and_inputs
    model = LikelihoodRatioScoreModel.from_causal_lm(lm, scale=2.0)
    params = list(model.lm.parameters())
    step = [1e-5 * torch.randn_like(p) for p in params]
    first_order = []
    for row in inputs:  # g_i: the per-sequence gradient, one at a time
        grads = torch.autograd.grad(explicit_ce(model.lm, row[None])[0], params)
        first_order.append(-2.0 * sum((g * d).sum() for g, d in zip(grads, step)))
    moved = []
    for sign in (1.0, -2.0):  # to theta + step, then theta - step: a central difference
        with torch.no_grad():
            for param, d in zip(params, step):
                param.add_(sign * d)
        moved.append(model.logits(inputs))
    central = (moved[0] - moved[1]) / 2
    torch.testing.assert_close(central, torch.stack(first_order), rtol=1e-5, atol=0)


def test_only_the_trained_copy_gets_gradients(lm_and_inputs):
    lm, inputs = lm_and_inputs
    model = LikelihoodRatioScoreModel.from_causal_lm(lm)
    with torch.no_grad():
        next(model.lm.parameters()).add_(0.1)
    model.logits(inputs).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in model.reference.parameters())
    assert any(p.grad is not None for p in model.lm.parameters())


def test_save_and_load_keep_both_copies_and_the_scale(lm_and_inputs, tmp_path):
    lm, inputs = lm_and_inputs
    model = LikelihoodRatioScoreModel.from_causal_lm(lm.float(), scale=5.0)
    with torch.no_grad():
        next(model.lm.parameters()).add_(0.05)
    model.save(tmp_path / "score_model", {"method": "bliss", "seq_length": 16})
    meta = json.loads((tmp_path / "score_model" / "score_model.json").read_text())
    assert meta["head"] == "likelihood_ratio" and meta["scale"] == 5.0
    loaded = load_score_model(tmp_path / "score_model")
    assert isinstance(loaded, LikelihoodRatioScoreModel)
    torch.testing.assert_close(loaded.logits(inputs), model.logits(inputs))


def test_the_score_cli_ranks_with_a_saved_likelihood_ratio(tiny_shard, tmp_path, tokenizer):
    from megatron_bliss.cli import main

    torch.manual_seed(0)
    model = LikelihoodRatioScoreModel.from_causal_lm(build_model("pythia-tiny", 512, 65))
    with torch.no_grad():
        next(model.lm.parameters()).add_(0.05)
    model.save(tmp_path / "scorer", {"method": "bliss", "seq_length": 64}, tokenizer=tokenizer)
    out = tmp_path / "scores.npy"
    assert main(["score", "--scorer", str(tmp_path / "scorer"), "--data-prefix", tiny_shard,
                 "--out", str(out), "--precision", "float32"]) == 0  # fmt: skip
    scores = np.load(out)
    assert np.isfinite(scores).all() and scores.std() > 0


def test_a_blocks_score_copy_moves_only_its_transformer_blocks(
    tmp_path, tiny_shard, tokenizer_dir, corpus_jsonl
):
    """``score_params: blocks``: after a BLISS fit the trained copy's token embeddings and LM
    head are still the warm proxy's (the frozen copy's), and its blocks have moved."""
    from tests.selection.test_target_shift import select_bliss

    select_bliss(tmp_path, tiny_shard, tokenizer_dir, corpus_jsonl, "bliss.score_params=blocks")
    model = load_score_model(tmp_path / "score_model")
    moved = {
        name: not torch.equal(trained, frozen)
        for (name, trained), frozen in zip(
            model.lm.named_parameters(), model.reference.parameters()
        )
    }
    assert not moved["gpt_neox.embed_in.weight"] and not moved["lm_head.weight"]
    assert moved["gpt_neox.layers.0.attention.query_key_value.weight"]
