"""MATES: probe labels are exact one-step computations, state is restored, the regressor round-trips."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from megatron_bliss.data.pool import SequencePool
from megatron_bliss.data.target_set import TargetSet, encode_example
from megatron_bliss.models.presets import build_model
from megatron_bliss.selection.base import SelectionContext
from megatron_bliss.selection.mates import (
    MatesSelector,
    ProbeRunner,
    ProbeSettings,
    score_pool_with_saved_model,
    spearman,
    target_loss,
)
from megatron_bliss.selection.proxy import sequence_losses
from megatron_bliss.selection.score_model import load_score_model
from tests.conftest import build_shard

SEQ = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer, corpus_texts):
    docs = [tokenizer.encode(text)[:40] for text in corpus_texts[:20]]
    pool = SequencePool(build_shard(tmp_path_factory.mktemp("mates") / "pool", docs), SEQ)
    examples = [encode_example(tokenizer, "", text[:200], 48) for text in corpus_texts[100:106]]
    torch.manual_seed(0)
    model = build_model("pythia-tiny", vocab_size=len(tokenizer)).eval()
    return pool, TargetSet(examples), model


def make_selector(setup, tmp_path, **overrides) -> MatesSelector:
    pool, target, model = setup
    config = {
        "num_probes": 20,
        "target_examples": 4,
        "target_batch_size": 3,
        "regressor_preset": "pythia-tiny",
        "regressor_epochs": 2,
        "regressor_batch_size": 8,
        "regressor_lr": 1e-3,
        "score_batch_size": 16,
    }
    config.update(overrides)
    context = SelectionContext(
        pool=pool, run_dir=tmp_path, target_set=target, target_model=model, seed=3
    )
    return MatesSelector(MatesSelector.Config(**config), context)


def manual_label(model, tokens, target, target_indices, lr) -> float:
    """The oracle label written out by hand: fresh AdamW, one clipped step, target loss."""
    probed = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(probed.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    sequence_losses(probed, tokens[None]).mean().backward()
    torch.nn.utils.clip_grad_norm_(probed.parameters(), 1.0)
    optimizer.step()
    return target_loss(probed, target, target_indices, 2, torch.device("cpu"))


def test_probe_labels_match_manual_one_step_updates(setup, tmp_path):
    pool, target, model = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    selector = make_selector(setup, tmp_path, target_examples=len(target), probe_lr=5e-3)
    labels = selector.oracle_labels(np.array([2, 7, 2]))
    everything = np.arange(len(target))
    for label, index in zip(labels, [2, 7, 2]):
        expected = manual_label(model, torch.from_numpy(pool[index]), target, everything, 5e-3)
        assert label == pytest.approx(expected, rel=1e-5)
    assert labels[0] == labels[2]  # the same probe from the same restored state
    assert labels[0] != labels[1]
    base = target_loss(model, target, everything, 2, torch.device("cpu"))
    assert labels[0] != pytest.approx(base, rel=1e-7)  # the step really changed the model
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), f"target model changed: {name}"


def test_probe_runner_restores_weights_and_optimizer_state(setup):
    pool, _, model = setup
    warm = copy.deepcopy(model)
    warm_optimizer = torch.optim.AdamW(warm.parameters(), lr=1e-3, betas=(0.9, 0.95))
    sequence_losses(warm, torch.from_numpy(pool[0])[None]).backward()
    warm_optimizer.step()
    saved_state = copy.deepcopy(warm_optimizer.state_dict())
    runner = ProbeRunner(model, ProbeSettings(lr=1e-2), optimizer_state=saved_state)
    runner.step(torch.from_numpy(pool[1]))
    assert not torch.equal(next(runner.model.parameters()), next(model.parameters()))
    runner.restore()
    for probe, frozen in zip(runner.model.parameters(), model.parameters()):
        assert torch.equal(probe, frozen) and probe.grad is None
    restored = runner.optimizer.state_dict()["state"]
    for key, state in saved_state["state"].items():
        assert torch.equal(restored[key]["exp_avg_sq"], state["exp_avg_sq"])
        assert float(restored[key]["step"]) == float(state["step"])


def test_fit_score_save_round_trip(setup, tmp_path):
    pool, _, _ = setup
    selector = make_selector(setup, tmp_path)
    scores = selector.score()
    assert scores.shape == (len(pool),) and scores.dtype == np.float32
    assert np.isfinite(scores).all() and scores.std() > 0
    assert selector.metrics["num_holdout"] == 2 and selector.metrics["num_train"] == 18
    assert np.isfinite(selector.metrics["holdout_spearman"]) and min(selector.flops.values()) > 0
    selector.save(tmp_path)
    reloaded = score_pool_with_saved_model(tmp_path / "score_model", pool, batch_size=5)
    np.testing.assert_allclose(reloaded, scores, rtol=1e-5, atol=1e-6)
    from megatron_bliss.selection.scoring import score_pool  # what `megatron-bliss score` runs

    shared = load_score_model(tmp_path / "score_model")
    via_cli = score_pool(shared, pool, batch_size=7, device=torch.device("cpu"), precision="fp32")
    np.testing.assert_allclose(via_cli, scores, rtol=1e-5, atol=1e-6)
    again = make_selector(setup, tmp_path).score()
    np.testing.assert_array_equal(again, scores)


def test_probes_come_from_a_disjoint_probe_shard(setup, tmp_path, tokenizer, corpus_texts):
    pool, target, model = setup
    docs = [tokenizer.encode(text)[:40] for text in corpus_texts[40:52]]
    probe_prefix = build_shard(tmp_path / "probe", docs)
    probe_pool = SequencePool(probe_prefix, SEQ)
    selector = make_selector(
        setup, tmp_path, probe_prefix=probe_prefix, num_probes=6, target_examples=len(target)
    )
    scores = selector.score()
    assert scores.shape == (len(pool),)  # probes from the probe shard, scores for the pool
    assert len(selector.probe_indices) == 6 and selector.probe_indices.max() < len(probe_pool)
    index = int(selector.probe_indices[0])
    expected = manual_label(
        model, torch.from_numpy(probe_pool[index]), target, np.arange(len(target)), 1e-3
    )
    assert selector.labels[0] == pytest.approx(expected, rel=1e-5)
    assert not np.array_equal(probe_pool[index], pool[index])
    with pytest.raises(ValueError, match="short has 0 sequences"):
        make_selector(setup, tmp_path, probe_prefix=build_shard(tmp_path / "short", [[1, 2]])).fit()


def test_spearman_and_errors(setup, tmp_path):
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])) == pytest.approx(1.0)
    assert spearman(np.array([3.0, 2.0, 1.0]), np.array([1.0, 5.0, 9.0])) == pytest.approx(-1.0)
    pool, _, model = setup
    context = SelectionContext(pool=pool, run_dir=tmp_path, target_model=model)
    with pytest.raises(ValueError, match="target set"):
        MatesSelector(MatesSelector.Config(num_probes=2), context).fit()
    with pytest.raises(FileNotFoundError, match=r"score_model\.json"):
        score_pool_with_saved_model(tmp_path / "nowhere", pool)
