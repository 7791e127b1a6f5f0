"""The multi-round pipeline end to end on a tiny corpus: resume after a kill in every stage.

One warm-up is shared: the first run is killed right before round 1's selection, so round 0 is
finished once and every later run must skip it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from megatron_bliss.config import ConfigError, from_dict, read_yaml
from megatron_bliss.engine.hooks import Hooks
from megatron_bliss.exit_codes import Interrupted
from megatron_bliss.pipeline.config import PipelineConfig, load_pipeline_config
from megatron_bliss.pipeline.runner import PipelineHooks, run_pipeline


class Killed(RuntimeError):
    pass


def make_inputs(folder, tiny_shard, tokenizer_dir, texts, num_shards: int) -> dict:
    """Pipeline inputs in ``folder``: the tiny shard split in ``num_shards``, a target jsonl."""
    from megatron_bliss.data.shards import split_indexed

    shards = split_indexed(tiny_shard, num_shards, str(folder / "tiny"))
    target = folder / "target.jsonl"
    target.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return {"shards": shards, "tokenizer": str(tokenizer_dir), "target": str(target)}


@pytest.fixture(scope="module")
def pipeline_inputs(tmp_path_factory, tiny_shard, tokenizer_dir, corpus_texts):
    folder = tmp_path_factory.mktemp("pipeline_inputs")
    return make_inputs(folder, tiny_shard, tokenizer_dir, corpus_texts[-8:], num_shards=2)


def tiny_config(inputs, run_dir, **changes) -> PipelineConfig:
    values = {
        "run_dir": str(run_dir),
        "method": "bliss",
        "shards": inputs["shards"],
        "tokenizer": inputs["tokenizer"],
        "seq_length": 32,
        "target_data": inputs["target"],
        "warmup_steps": 4,
        "warmup_fraction": 0.5,
        "round_steps": 3,
        "fraction": 0.25,
        "pretrain": {
            "model": {"preset": "pythia-tiny"},
            "train": {"global_batch_size": 4, "micro_batch_size": 2},
            "schedule": {"type": "constant", "warmup_steps": 1},
            "deepspeed": {"config": "ds_configs/cpu_zero2.json"},
            "checkpoint": {"save_interval": 2},
            "logging": {"progress_bar": False},
        },
        "select": {
            "target_preset": "pythia-tiny",
            "target_max_length": 32,
            "device": "cpu",
            "bliss": {
                "proxy_preset": "pythia-tiny",
                "proxy_warmup_steps": 2,
                "outer_steps": 2,
                "batch_size": 4,
                "target_batch_size": 4,
                "score_batch_size": 16,
            },
        },
        "eval": {"tasks": [], "task_data": None, "ppl_data": inputs["target"], "limit": 2},
    }
    values.update(changes)
    return from_dict(PipelineConfig, values)


def run_until_killed(config, kill_stage=None, stop_train_after=None):
    """Run the pipeline, killing it before ``(round, stage)`` or inside round 1's training."""
    seen = []

    def before_stage(r, name):
        seen.append((r, name))
        if (r, name) == kill_stage:
            raise Killed(f"killed before {kill_stage}")

    def train_hooks(r, name):
        if r == 1 and stop_train_after is not None:
            return Hooks(stop_after_step=stop_train_after, stop_with_checkpoint=False)
        return None

    try:
        run_pipeline(config, PipelineHooks(before_stage, train_hooks))
    except (Killed, Interrupted):
        return seen, False
    return seen, True


@pytest.mark.slow
def test_pipeline_resumes_after_a_kill_in_each_stage(pipeline_inputs, tmp_path):
    config = tiny_config(pipeline_inputs, tmp_path / "run")
    seen, finished = run_until_killed(config, kill_stage=(1, "select"))
    assert not finished and seen == [(0, "select"), (0, "train"), (0, "eval"), (1, "select")]
    assert (tmp_path / "run/round_0/eval.json").exists()

    seen, finished = run_until_killed(config, stop_train_after=6)  # mid-round, after a checkpoint
    assert not finished and seen == [(1, "select"), (1, "train")]
    assert (tmp_path / "run/round_1/selection.npy").exists()

    seen, finished = run_until_killed(config, kill_stage=(1, "eval"))
    assert not finished and seen == [(1, "train"), (1, "eval")]
    lines = (tmp_path / "run/round_1/metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    assert [m["step"] for m in metrics if "loss" in m] == [5, 6, 7]  # resumed at step 5, not 0

    seen, finished = run_until_killed(config)
    assert finished and seen == [(1, "eval")]
    summary = json.loads((tmp_path / "run/pipeline.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    assert summary["rounds"][1]["tokens"] == (4 + 3) * 4 * 32
    flops = summary["rounds"][1]["flops"]
    assert flops["target_training"] > 0 and flops["selector_training"] > 0 and flops["scoring"] > 0
    selection = np.load(tmp_path / "run/round_1/selection.npy")
    scores = np.load(tmp_path / "run/round_1/scores.npy")
    assert (
        len(selection) == int(0.25 * len(scores))
        and (tmp_path / "run/round_1/score_model").is_dir()
    )
    assert "c4_ppl" in json.loads((tmp_path / "run/round_1/eval.json").read_text())

    seen, finished = run_until_killed(config)  # all done: nothing runs again
    assert finished and seen == []

    changed = tiny_config(pipeline_inputs, tmp_path / "run", round_steps=4)
    with pytest.raises(ConfigError, match=r"round_1/stages/train\.json"):
        run_pipeline(changed)


@pytest.mark.slow
def test_random_pipeline_reuses_the_warmup(pipeline_inputs, tmp_path):
    bliss = tiny_config(pipeline_inputs, tmp_path / "bliss", num_rounds=0)
    run_pipeline(bliss)
    random = tiny_config(
        pipeline_inputs, tmp_path / "random", method="random",
        reuse_warmup=str(tmp_path / "bliss/round_0"),
    )  # fmt: skip
    seen, finished = run_until_killed(random)
    assert finished and (0, "train") not in seen and (1, "train") in seen
    assert (tmp_path / "random/round_0").is_symlink()
    assert (
        json.loads((tmp_path / "random/round_1/selection.json").read_text())["method"] == "random"
    )


def test_influence_adam_version_preconditions_with_the_previous_round(pipeline_inputs, tmp_path):
    import yaml

    from megatron_bliss.pipeline.stage_configs import train_stage_config

    tiny_influence = {"num_landmarks": 8, "proj_dim": 128, "jvp_proj_dim": 64, "num_blocks": 1}
    config = tiny_config(
        pipeline_inputs, tmp_path / "run", method="influence", num_rounds=1,
        eval={"enabled": False},
    )  # fmt: skip
    config.select["influence"] = {**tiny_influence, "adam_state": "auto"}
    run_pipeline(config)
    for r in (0, 1):
        checkpoints = tmp_path / f"run/round_{r}/checkpoints"
        latest = (checkpoints / "latest").read_text().strip()
        assert (checkpoints / latest / "adam_state.pt").exists()
        stage = yaml.safe_load((tmp_path / f"run/round_{r}/config.yaml").read_text())
        assert stage["checkpoint"]["adam_state_params"] == ["down_proj"]
    resolved = yaml.safe_load((tmp_path / "run/round_1/select_run/config.yaml").read_text())
    assert resolved["influence"]["adam_state"] == str(tmp_path / "run/round_0/checkpoints")

    plain = tiny_config(pipeline_inputs, tmp_path / "plain", method="influence")
    plain.select["influence"] = tiny_influence  # default: plain gradients, nothing exported
    stage = train_stage_config(
        plain, run_dir=tmp_path, steps=4, lr_multiplier=1.0, shard="shard", selection="sel.npy"
    )
    assert stage.checkpoint.adam_state_params == []


@pytest.fixture(scope="module")
def three_shards(tmp_path_factory, tiny_shard, tokenizer_dir, corpus_texts):
    folder = tmp_path_factory.mktemp("three_shards")
    return make_inputs(folder, tiny_shard, tokenizer_dir, corpus_texts[-8:], num_shards=3)


def test_rounds_in_one_engine_select_and_train_as_rounds_with_new_engines(
    three_shards, tmp_path, monkeypatch
):
    import deepspeed

    engines = []
    initialize = deepspeed.initialize
    monkeypatch.setattr(deepspeed, "initialize", lambda **kw: engines.append(1) or initialize(**kw))
    runs = {}
    for keep_engine in (True, False):
        run_dir = tmp_path / f"keep_{keep_engine}"
        config = tiny_config(
            three_shards, run_dir, method="perplexity", eval={"enabled": False},
        )  # fmt: skip
        config.pretrain["launcher"] = {"type": "inprocess", "keep_engine": keep_engine}
        runs[keep_engine] = (run_pipeline(config), run_dir)
    assert engines == [1] + [1, 1, 1]  # one engine for three rounds, then one per round

    (kept, kept_dir), (new, new_dir) = runs[True], runs[False]
    assert [r["tokens"] for r in kept["rounds"]] == [r["tokens"] for r in new["rounds"]]
    for r in (0, 1, 2):
        losses = [json.loads((d / f"round_{r}/summary.json").read_text())["losses"]
                  for d in (kept_dir, new_dir)]  # fmt: skip
        np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)
        assert len(losses[0]) == (4 if r == 0 else 3)
    for r in (1, 2):  # round 2 selects with round 1's in-engine model
        selections = [(d / f"round_{r}/scores.npy").read_bytes() for d in (kept_dir, new_dir)]
        assert selections[0] == selections[1]


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("shards: []\n")
    with pytest.raises(ConfigError, match="shards"):
        load_pipeline_config(bad)
    bad.write_text("shards: [a, b]\nnum_rounds: 3\n")
    with pytest.raises(ConfigError, match="needs 4 shards"):
        load_pipeline_config(bad)
    bad.write_text("shards: [a, b]\nwarmup_stepz: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'warmup_stepz'"):
        load_pipeline_config(bad)


@pytest.mark.slow
def test_pipeline_prepares_shards_and_validates_from_a_raw_corpus(corpus_jsonl, tmp_path):
    texts = [json.loads(line)["text"] for line in corpus_jsonl.read_text().splitlines()]
    held_out = tmp_path / "held_out.jsonl"  # 20 new documents and 3 that are in the pool
    rows = [" ".join(reversed(t.split())) for t in texts[:20]] + texts[:3]
    held_out.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    inputs = {"shards": [], "tokenizer": None, "target": str(corpus_jsonl)}
    config = tiny_config(
        inputs, tmp_path / "run", method="random", num_rounds=1, tokenizer=None,
        prepare={"corpus": [str(corpus_jsonl)], "valid_corpus": [str(held_out)],
                 "tokenizer_vocab_size": 300},
        eval={"enabled": False},
    )  # fmt: skip
    config.pretrain["logging"]["eval_interval"] = 2
    summary = run_pipeline(config)
    assert len(summary["rounds"]) == 2 and summary["valid_prefix"].endswith("valid_text_document")
    manifest = json.loads(Path(summary["valid_prefix"] + ".json").read_text())
    assert manifest["documents"] == 20  # the 3 pool documents were left out
    assert (tmp_path / "run/data/tokenizer/tokenizer.json").exists()
    lines = (tmp_path / "run/round_1/metrics.jsonl").read_text().splitlines()
    assert any("val_loss" in json.loads(line) for line in lines)


def test_snapshot_target_selects_with_the_previous_rounds_snapshot(pipeline_inputs, tmp_path):
    """``snapshot_target``: the sequential run selects as an overlapped one would, from the
    warm-up's state at half its steps, and says so in ``selection.json``."""
    run_dir = tmp_path / "stale"
    config = tiny_config(
        pipeline_inputs, run_dir, method="perplexity", snapshot_target=True, eval={"enabled": False}
    )
    config.pretrain["launcher"] = {"type": "inprocess", "keep_engine": False}
    run_pipeline(config)
    trained_from = read_yaml(run_dir / "round_1/config.yaml")["checkpoint"]["load"]
    assert trained_from == str(run_dir / "round_0/checkpoints")  # only the selection is stale
    target = json.loads((run_dir / "round_1/selection.json").read_text())["target"]
    assert target == {
        "checkpoints": "round_0/snapshot", "step": 2, "snapshot": True, "snapshot_fraction": 0.5
    }  # fmt: skip
    assert (run_dir / "round_0/snapshot/latest").read_text() == "global_step2"
    assert not (run_dir / "round_1/snapshot").exists()  # the last round is followed by nothing
