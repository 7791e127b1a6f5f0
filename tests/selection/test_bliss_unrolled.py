"""BLISS's ``unrolled`` direction: z is minus the displacement of a proxy copy trained on the
target set."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

from megatron_bliss.data.pool import SequencePool
from megatron_bliss.data.target_set import TargetSet
from megatron_bliss.models.presets import build_model
from megatron_bliss.selection.base import SelectionContext
from megatron_bliss.selection.bliss import BatchSampler, BlissSelector
from megatron_bliss.selection.hypergrad import dot
from megatron_bliss.selection.proxy import cosine_with_warmup, freeze, pool_batch, target_loss_sum
from megatron_bliss.selection.solvers import Direction, SolverSettings

SETTINGS = BlissSelector.Config(
    proxy_init="target", solver="unrolled", unroll_steps=3, unroll_lr=1e-2, outer_steps=3,
    batch_size=4, target_batch_size=4, upper_batch_size=4, lr_proxy=1e-3, lr_score=1e-3,
    gamma=0.1, log_interval=1, diagnostic_sequences=8, score_batch_size=16, dtype="float64",
)  # fmt: skip


def _selector(shard, tokenizer_dir, corpus_texts, tmp_path, **changes):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    target_jsonl = tmp_path / "target.jsonl"
    target_jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus_texts[-4:]))
    torch.manual_seed(0)
    target = build_model("pythia-tiny", 512, 17, attn_implementation="sdpa").double()
    context = SelectionContext(
        pool=SequencePool(shard, 16), run_dir=tmp_path, tokenizer=tokenizer,
        target_set=TargetSet.from_jsonl(target_jsonl, tokenizer, "documents", 24, limit=4),
        target_model=freeze(target), device=torch.device("cpu"), seed=0,
    )  # fmt: skip
    return BlissSelector(dataclasses.replace(SETTINGS, **changes), context)


def _trained_copy(proxy, target_set, batches, settings):
    """The copy trained by hand: AdamW, cosine schedule, clipping, the given target batches."""
    model = copy.deepcopy(proxy)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.unroll_lr, betas=(settings.beta1, settings.beta2),
        weight_decay=0.0,
    )  # fmt: skip
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(settings.unroll_steps, 0.1)
    )
    for indices in batches:
        input_ids, labels = target_set.batch(indices)
        loss_sum, count = target_loss_sum(model, input_ids, labels)
        optimizer.zero_grad()
        (loss_sum / count).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        schedule.step()
    return model


def test_unrolled_direction_is_minus_the_displacement_of_a_copy_trained_on_the_target_set(
    tiny_shard, tokenizer_dir, corpus_texts, tmp_path
):
    selector = _selector(tiny_shard, tokenizer_dir, corpus_texts, tmp_path)
    selector.proxy = copy.deepcopy(selector.context.target_model).requires_grad_(True).train()
    before = [p.detach().clone() for p in selector.proxy.parameters()]
    z = selector.unrolled_direction(BatchSampler(100, len(selector.context.target_set), seed=5))

    replay = BatchSampler(100, len(selector.context.target_set), seed=5)
    batches = [replay.target(SETTINGS.target_batch_size) for _ in range(SETTINGS.unroll_steps)]
    trained = _trained_copy(selector.proxy, selector.context.target_set, batches, SETTINGS)
    for v, moved, start in zip(z, trained.parameters(), before):
        torch.testing.assert_close(v, start - moved.detach(), rtol=1e-9, atol=1e-12)
    assert sum(float(v.abs().sum()) for v in z) > 0
    for parameter, saved in zip(selector.proxy.parameters(), before):
        assert torch.equal(parameter, saved)  # the proxy itself does not move


def test_unrolled_direction_points_along_the_target_gradient(
    tiny_shard, tokenizer_dir, corpus_texts, tmp_path
):
    """The sign the score model relies on: ``c_i > 0`` for data that lowers the target-set loss,
    as with ``z = grad f`` (a descent step moves against z)."""
    selector = _selector(tiny_shard, tokenizer_dir, corpus_texts, tmp_path, unroll_lr=1e-3)
    selector.proxy = copy.deepcopy(selector.context.target_model).requires_grad_(True).train()
    z = selector.unrolled_direction(BatchSampler(100, len(selector.context.target_set), seed=5))
    grad_f, _ = selector._target_gradient(np.arange(len(selector.context.target_set)))
    assert float(dot(z, grad_f)) > 0


def test_unrolled_direction_must_be_set_before_use():
    direction = Direction(SolverSettings(name="unrolled"))
    assert not direction.needs_target_gradient and not direction.needs_hvp
    with pytest.raises(ValueError, match="set_fixed"):
        direction(None, None)
    direction.set_fixed([torch.ones(2)])
    assert torch.equal(direction(None, None)[0][0], torch.ones(2))


@pytest.mark.parametrize("refresh", [0, 2])
def test_a_fit_with_the_unrolled_solver_makes_z_once_or_every_refresh_steps(
    tiny_shard, tokenizer_dir, corpus_texts, tmp_path, refresh, monkeypatch
):
    selector = _selector(tiny_shard, tokenizer_dir, corpus_texts, tmp_path, unroll_refresh=refresh)
    made = []
    original = selector.unrolled_direction
    monkeypatch.setattr(selector, "unrolled_direction", lambda s: made.append(1) or original(s))
    selector.fit()
    assert len(made) == (1 if refresh == 0 else 2)  # steps 0 and 2 of 3
    scores = selector.score()
    assert np.isfinite(scores).all() and scores.std() > 0
    assert np.isfinite(selector.diagnostics["spearman_alignment"])
    assert all(np.isfinite(r["target_loss"]) for r in selector.history)


def test_unroll_steps_must_be_positive():
    with pytest.raises(ValueError, match="unroll_steps must be >= 1"):
        dataclasses.replace(SETTINGS, unroll_steps=0)


def test_alignment_ranking_scores_the_pool_by_the_direct_dots(
    tiny_shard, tokenizer_dir, corpus_texts, tmp_path
):
    selector = _selector(tiny_shard, tokenizer_dir, corpus_texts, tmp_path, ranking="alignment")
    selector.fit()
    scores = selector.score()
    pool = selector.context.pool
    tokens = pool_batch(pool, np.arange(len(pool)), torch.device("cpu"))
    expected = selector.alignment(tokens, selector.direction.fixed).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-7)
    assert scores.std() > 0
