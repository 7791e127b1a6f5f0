"""``megatron-bliss compare`` on a tiny config: one warm-up per seed shared by every method, equal
target-training tokens, compare.json with per-seed results and their summary, and the report."""

from __future__ import annotations

import json
import os

import pytest

from megatron_bliss.pipeline.compare import run_compare, summarize, tokens_to_reach
from tests.pipeline.test_runner import make_inputs, tiny_config


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_shard, tokenizer_dir, corpus_texts):
    folder = tmp_path_factory.mktemp("compare")
    inputs = make_inputs(folder, tiny_shard, tokenizer_dir, corpus_texts[-16:], num_shards=3)
    shards = inputs["shards"]
    config = tiny_config(
        inputs, folder / "run", num_rounds=2, target_heldout_fraction=0.5,
        eval={"enabled": False}, compare={"methods": ["random", "dsir"], "seeds": 2},
    )  # fmt: skip
    config.pretrain["logging"].update(eval_interval=2, eval_batches=1)
    config.pretrain["data"] = {"valid_prefix": shards[0]}
    config.select["dsir"] = {"num_buckets": 256, "features": "tokens"}
    result = run_compare(config)
    return folder / "run", result


def test_every_method_starts_from_the_seeds_shared_warmup(compared):
    root, result = compared
    for k in range(2):
        for method in ("random", "dsir"):
            link = root / f"seed_{k}" / method / "round_0"
            assert link.is_symlink()
            assert os.path.realpath(link) == os.path.realpath(root / f"seed_{k}/warmup/round_0")
    assert result["seeds"] == [1234, 2234]


def test_methods_train_on_equal_tokens_and_record_both_held_out_losses(compared):
    _, result = compared
    tokens = {
        (method, k, r["round"]): r["tokens"]
        for method, by_seed in result["runs"].items()
        for k, seed in by_seed.items()
        for r in seed["rounds"]
    }
    assert set(tokens.values()) == {3 * 4 * 32, 6 * 4 * 32}  # rounds of 3 steps x 4 x 32 tokens
    final = result["runs"]["dsir"]["0"]["rounds"][-1]
    assert final["target_loss"] > 0 and final["c4_loss"] > 0
    assert final["flops"]["target_training"] > 0


def test_summary_and_report(compared):
    root, result = compared
    dsir = result["summary"]["dsir"]["target_loss"]
    assert len(dsir["per_seed"]) == 2 and dsir["std"] >= 0
    assert result["unigram"]["target"] > 0 and result["unigram"]["c4"] > 0
    saved = json.loads((root / "compare.json").read_text())
    assert saved["summary"].keys() == {"random", "dsir"}
    report = (root / "report.md").read_text()
    assert "| **dsir** |" in report and "Outcome." in report
    assert "### dsir" in report and "### random" not in report  # random's scores rank nothing
    assert (root / "plots" / "compare_losses.png").is_file()


def test_tokens_to_reach_interpolates_between_evaluations():
    curve = [[0, 6.0, None], [100, 5.0, None], [200, 4.0, None]]
    assert tokens_to_reach(curve, 4.5) == pytest.approx(150.0)
    assert tokens_to_reach(curve, 6.5) == 0.0
    assert tokens_to_reach(curve, 3.0) is None


def test_summary_reports_the_share_of_baseline_tokens_needed():
    def seed(curve, loss, tokens=200):
        return {"rounds": [{"target_loss": loss, "tokens": tokens, "flops": {}}], "curve": curve}

    runs = {
        "random": {"0": seed([[100, 5.5, None], [200, 5.0, None]], 5.0)},
        "bliss": {"0": seed([[100, 5.0, None], [200, 4.5, None]], 4.5)},
    }
    summary = summarize(runs, "random")
    assert summary["bliss"]["tokens_to_baseline"]["mean"] == pytest.approx(0.5)
    assert summary["random"]["tokens_to_baseline"]["mean"] == pytest.approx(1.0)


def test_a_named_variant_runs_its_method_with_its_select_settings(tmp_path):
    from megatron_bliss.config import ConfigError
    from megatron_bliss.pipeline.compare import resolve_method

    inputs = {"shards": ["s0", "s1"], "tokenizer": "tok", "target": "target.jsonl"}
    config = tiny_config(inputs, tmp_path, compare={
        "methods": ["bliss", "bliss_paper"],
        "variants": {"bliss_paper": {"method": "bliss", "select": {"bliss": {"variant": "paper"}}},
                     "broken": {"select": {}}},
    })  # fmt: skip
    resolved = resolve_method(config, "bliss_paper")
    assert resolved["method"] == "bliss" and resolved["select"]["bliss"]["variant"] == "paper"
    assert resolved["select"]["bliss"]["outer_steps"] == config.select["bliss"]["outer_steps"]
    assert resolve_method(config, "bliss")["select"] == config.select
    with pytest.raises(ConfigError, match=r"compare\.variants\.broken"):
        resolve_method(config, "broken")


def test_a_snapshot_target_variant_gets_the_seeds_warmup_a_snapshot(tmp_path):
    """A variant selecting from snapshots (overlap's staler target) shares the warm-up, which
    then also writes its half-way snapshot; the other methods are unchanged."""
    from megatron_bliss.pipeline.compare import run_configs

    inputs = {"shards": ["s0", "s1"], "tokenizer": "tok", "target": "target.jsonl"}
    config = tiny_config(inputs, tmp_path, compare={
        "methods": ["bliss", "bliss_stale"],
        "variants": {"bliss_stale": {"method": "bliss", "snapshot_target": True}},
    })  # fmt: skip
    warmup, methods = run_configs(config, tmp_path, 0)
    assert warmup.snapshot_target and methods["bliss_stale"].snapshot_target
    assert not methods["bliss"].snapshot_target
    assert methods["bliss_stale"].reuse_warmup == methods["bliss"].reuse_warmup
