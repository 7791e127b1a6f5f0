"""``selection_rule: auto``: the held-out split, the shift test, the temperature BLISS picks from
it, and a ``select`` run that records and applies that choice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megatron_bliss.cli import main
from megatron_bliss.selection.bliss import BlissSelector
from megatron_bliss.selection.rule import select_top_fraction
from megatron_bliss.selection.target_shift import (
    MIN_HOLDOUT,
    ShiftTest,
    holdout_split,
    shift_test,
    uniform_temperature,
)
from tests.selection.test_select_cli import CONFIG, TINY_BLISS


def token_lists(count: int) -> list[np.ndarray]:
    return [np.array([i, i + 1, 7]) for i in range(count)]


def test_holdout_split_is_disjoint_complete_and_capped():
    fit, held = holdout_split(token_lists(1000), max_examples=64)
    assert len(held) == 64 and len(fit) == 936
    assert np.array_equal(np.sort(np.concatenate([fit, held])), np.arange(1000))
    assert len(holdout_split(token_lists(100), 64)[1]) == 20  # a fifth of the set


def test_holdout_split_holds_out_the_same_examples_whatever_their_order():
    """Every round must hold out the same examples (a carried-over score model has seen the
    others through its loop), wherever a round's target set lists them."""
    examples = token_lists(200)
    held = {tuple(examples[i]) for i in holdout_split(examples, 16)[1]}
    reversed_examples = examples[::-1]
    again = {tuple(reversed_examples[i]) for i in holdout_split(reversed_examples, 16)[1]}
    assert held == again and len(held) == 16


def test_holdout_split_holds_none_when_too_few_examples_would_be_held():
    fit, held = holdout_split(token_lists(5 * MIN_HOLDOUT - 1), max_examples=64)
    assert len(held) == 0 and len(fit) == 5 * MIN_HOLDOUT - 1
    assert len(holdout_split(token_lists(5 * MIN_HOLDOUT), 64)[1]) == MIN_HOLDOUT


def test_shift_test_auc_is_the_fraction_of_pairs_with_ties_counted_half():
    target = np.array([3.0, 1.0, 2.0, 2.0])
    pool = np.array([0.0, 2.0, 1.0, 5.0, 2.0])
    pairs = (target[:, None] > pool[None, :]).mean() + 0.5 * (
        target[:, None] == pool[None, :]
    ).mean()
    assert shift_test(target, pool, 0.01).auc == pytest.approx(pairs)


def test_shift_test_trusts_a_ranking_that_puts_unseen_target_text_above_the_pool():
    rng = np.random.default_rng(0)
    pool = rng.normal(size=3000)
    shifted = shift_test(rng.normal(1.0, 1.0, size=64), pool, 0.01)
    assert shifted.sharp and shifted.auc > 0.7 and shifted.p_value < 1e-6


def test_shift_test_does_not_trust_a_ranking_that_scores_target_text_like_pool_text():
    rng = np.random.default_rng(0)
    tests = [shift_test(rng.normal(size=64), rng.normal(size=3000), 0.01) for _ in range(200)]
    assert sum(test.sharp for test in tests) <= 8  # 1% expected: 2 of 200
    assert abs(np.mean([test.auc for test in tests]) - 0.5) < 0.01


def sixty_examples_context(tmp_path):
    from megatron_bliss.data.target_set import TargetExample, TargetSet
    from megatron_bliss.selection.base import SelectionContext

    examples = [TargetExample(np.arange(i, i + 5), np.arange(i, i + 5)) for i in range(60)]
    return SelectionContext(pool=None, run_dir=tmp_path, target_set=TargetSet(examples))


def test_bliss_trains_on_the_target_examples_it_does_not_hold_out(tmp_path):
    context = sixty_examples_context(tmp_path)
    selector = BlissSelector(BlissSelector.Config(), context)
    selector._hold_out_target_examples()
    trained = {id(example) for example in selector.context.target_set.examples}
    held = {id(example) for example in selector.holdout.examples}
    assert len(trained) == 48 and len(held) == 12 and not trained & held
    assert len(context.target_set) == 60  # the caller's context is left as it was


SCORES = np.array([-1.0, 0.5, 2.0])


@pytest.mark.parametrize("settings", [{"selection_rule": "top_k"}, {"ranking": "alignment"}])
def test_rules_that_run_no_test_hold_nothing_out(tmp_path, settings):
    selector = BlissSelector(BlissSelector.Config(**settings), sixty_examples_context(tmp_path))
    selector._hold_out_target_examples()
    assert selector.holdout is None and len(selector.context.target_set) == 60


def temperature_of(rule: str, sharp: bool | None, configured: float = 0.0) -> float:
    selector = BlissSelector(BlissSelector.Config(selection_rule=rule), context=None)
    if sharp is not None:
        selector.shift = ShiftTest(0.5, 0.5, 64, 1000, 0.01, sharp)
    return selector.selection_temperature(configured, SCORES)


@pytest.mark.parametrize(
    ("rule", "sharp", "configured", "expected"),
    [("auto", True, 0.0, 0.0), ("auto", False, 0.0, uniform_temperature(SCORES)),
     ("auto", None, 0.0, 0.0), ("top_k", False, 0.0, 0.0), ("sample", True, 0.0, 1.0),
     ("auto", False, 0.5, 0.5), ("sample", None, 2.0, 2.0)],
)  # fmt: skip
def test_bliss_keeps_its_top_k_only_when_its_ranking_is_shown_to_track_the_target(
    rule, sharp, configured, expected
):
    assert temperature_of(rule, sharp, configured) == expected


def test_the_uniform_temperature_leaves_the_scores_no_say_in_the_selection():
    """Scores that rank one half of the pool far above the other: at the uniform temperature
    the kept fifth draws from both halves as a uniform sample would, seed after seed."""
    scores = np.concatenate([np.full(500, 10.0), np.full(500, -10.0)]) + np.arange(1000) * 1e-3
    temperature = uniform_temperature(scores)
    for seed in range(5):
        kept = select_top_fraction(scores, 0.2, seed, temperature)
        noise_only = select_top_fraction(np.zeros(1000), 0.2, seed, 1.0)
        assert np.array_equal(kept, noise_only)


def test_paper_variant_keeps_the_deterministic_top_k():
    assert BlissSelector.Config(variant="paper").selection_rule == "top_k"


def select_bliss(run_dir, shard, tokenizer_dir, target_jsonl, *overrides) -> dict:
    """``select --method bliss`` on the tiny shard with 60 target examples; its selection.json."""
    code = main(
        ["select", "--method", "bliss", "--config", CONFIG, "--data-prefix", shard,
         "--target-data", str(target_jsonl), "--tokenizer", str(tokenizer_dir),
         "--run-dir", str(run_dir), "--fraction", "0.25", *TINY_BLISS, "target_limit=60",
         *overrides]
    )  # fmt: skip
    assert code == 0
    return json.loads((run_dir / "selection.json").read_text())


def test_select_records_the_shift_test_and_selects_with_the_temperature_it_chose(
    tmp_path, tiny_shard, tokenizer_dir, corpus_jsonl
):
    """60 target examples: 12 are held out of the loop and scored against the pool; the
    selection follows the rule with the temperature ``selection.json`` records."""
    meta = select_bliss(tmp_path, tiny_shard, tokenizer_dir, corpus_jsonl)
    shift = meta["target_shift"]
    assert meta["selection_rule"] == "auto" and shift["target_examples"] == 12
    uniform = uniform_temperature(np.load(tmp_path / "scores.npy"))
    assert meta["gumbel_temperature"] == pytest.approx(0.0 if shift["sharp"] else uniform)
    assert shift["sharp"] == (shift["p_value"] < shift["alpha"])
    scores = np.load(tmp_path / "scores.npy")
    expected = select_top_fraction(scores, 0.25, meta["seed"], meta["gumbel_temperature"])
    assert np.array_equal(np.load(tmp_path / "selection.npy"), expected)


def test_select_with_alpha_near_zero_keeps_a_uniform_sample(
    tmp_path, tiny_shard, tokenizer_dir, corpus_jsonl
):
    meta = select_bliss(
        tmp_path, tiny_shard, tokenizer_dir, corpus_jsonl, "bliss.shift_alpha=1e-300"
    )
    assert not meta["target_shift"]["sharp"]
    uniform = select_top_fraction(np.zeros(meta["num_sequences"]), 0.25, meta["seed"], 1.0)
    assert np.array_equal(np.load(tmp_path / "selection.npy"), uniform)


def test_pool_document_tails_skip_documents_too_short_to_score(tmp_path):
    from megatron_bliss.data.pool import SequencePool
    from megatron_bliss.selection.target_shift import pool_document_tails
    from tests.conftest import build_shard

    prefix = build_shard(tmp_path / "d", [[5, 6, 7, 0], [9, 0], [1, 2, 3, 4, 0]])
    tails = pool_document_tails(SequencePool(prefix, 2), count=5, length=3, eod=0, seed=0)
    assert sorted(t.tolist() for t in tails) == [[2, 3, 4], [5, 6, 7]]
