"""``selections_from``: a run trains every round on another run's selection of that round, on
the shards those selections index, and spends nothing on selection."""

from __future__ import annotations

import json

import pytest

from megatron_bliss.config import ConfigError, dump_yaml
from megatron_bliss.errors import MissingFileError
from megatron_bliss.pipeline.config import load_pipeline_config
from megatron_bliss.pipeline.runner import run_pipeline
from tests.pipeline.test_runner import make_inputs, tiny_config


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, tiny_shard, tokenizer_dir, corpus_texts):
    folder = tmp_path_factory.mktemp("source")
    inputs = make_inputs(folder, tiny_shard, tokenizer_dir, corpus_texts[-8:], num_shards=2)
    run_dir = folder / "run"
    config = tiny_config(inputs, run_dir, method="dsir", num_rounds=1, eval={"enabled": False})
    run_pipeline(config)
    return run_dir


def reuse_yaml(source_run, tmp_path, **changes):
    """A pipeline YAML with no shards, training on ``source_run``'s selections."""
    config = tiny_config({"shards": [], "tokenizer": None, "target": ""}, tmp_path / "reuse")
    config.tokenizer = json.loads((source_run / "pipeline.json").read_text())["tokenizer"]
    config.selections_from = str(source_run)
    config.pretrain["train"]["global_batch_size"] = 8  # another model setting, the same data
    config.eval.enabled = False
    for key, value in changes.items():
        setattr(config, key, value)
    path = tmp_path / "reuse.yaml"
    dump_yaml(config, path)
    return path


def test_rounds_train_on_the_source_runs_selections(source_run, tmp_path):
    config = load_pipeline_config(reuse_yaml(source_run, tmp_path))
    source = json.loads((source_run / "pipeline.json").read_text())
    assert config.num_rounds == 1
    assert config.shards == [r["data_prefix"] for r in source["rounds"]]

    summary = run_pipeline(config)
    for r in (0, 1):
        ours, theirs = tmp_path / f"reuse/round_{r}", source_run / f"round_{r}"
        assert (ours / "selection.npy").read_bytes() == (theirs / "selection.npy").read_bytes()
    round_1 = summary["rounds"][1]
    assert round_1["flops"]["selector_training"] == 0 and round_1["flops"]["scoring"] == 0
    assert round_1["data_prefix"] == source["rounds"][1]["data_prefix"]
    assert round_1["tokens"] > summary["rounds"][0]["tokens"]  # it did train on them


def test_another_sequence_length_stops_with_one_line(source_run, tmp_path):
    with pytest.raises(ConfigError, match="index sequences of 32 tokens"):
        load_pipeline_config(reuse_yaml(source_run, tmp_path, seq_length=64))


def test_a_round_the_source_did_not_select_stops_with_one_line(source_run, tmp_path):
    with pytest.raises(MissingFileError, match=r"round_2/selection.json: selections_from run"):
        load_pipeline_config(reuse_yaml(source_run, tmp_path, num_rounds=2))
