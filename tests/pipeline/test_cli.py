"""pipeline preflight: a wrong setting for any stage stops the run before the first stage, from
the command line and from Python alike."""

from __future__ import annotations

import json

import pytest
import yaml

from megatron_bliss.cli import main
from megatron_bliss.config import ConfigError
from megatron_bliss.pipeline.config import load_pipeline_config
from megatron_bliss.pipeline.preflight import preflight


@pytest.fixture
def config_file(tmp_path, tiny_shard, tokenizer_dir):
    target = tmp_path / "target.jsonl"
    target.write_text(json.dumps({"text": "a held-out document"}) + "\n")
    values = {
        "run_dir": str(tmp_path / "run"),
        "method": "bliss",
        "shards": [tiny_shard, tiny_shard],
        "tokenizer": str(tokenizer_dir),
        "target_data": str(target),
        "pretrain": {"model": {"preset": "pythia-tiny"}, "train": {"precision": "fp32"}},
        "select": {"target_preset": "pythia-tiny", "bliss": {"outer_steps": 2}},
        "eval": {"tasks": ["piqa"], "task_data": None},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_a_valid_config_passes_preflight(config_file):
    preflight(load_pipeline_config(config_file), str(config_file))


@pytest.mark.parametrize(
    ("override", "message"),
    [("select.bliss.outer_stepz=3", "select: bliss: unknown key 'outer_stepz'"),
     ("pretrain.train.precision=fp8", "pretrain: train.precision='fp8'"),
     ("method=foo", "unknown selection method 'foo'"),
     ("eval.tasks=[nosuch]", "unknown task(s) nosuch"),
     ("target_data=missing.jsonl", "missing.jsonl: target_data file not found"),
     ("eval.ppl_data=missing.jsonl", "missing.jsonl: eval.ppl_data file not found"),
     ("target_format=lastword", "target_format 'lastword'"),
     ("shards=[nothere,nothere]", "nothere.bin: shard file not found"),
     ("pretrain.launcher.typ=torchrun", "pretrain.launcher: unknown key 'typ'"),
     ("pretrain.launcher.type=slurm", "type 'slurm' is not one of inprocess, torchrun"),
     ("target_data=null", "method 'bliss' needs a target set (target_data)")],
)  # fmt: skip
def test_bad_setting_stops_before_any_stage(config_file, tmp_path, capsys, override, message):
    code = main(["pipeline", "--config", str(config_file), override])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_run_pipeline_from_python_checks_like_the_command(config_file, tmp_path):
    from megatron_bliss.pipeline.runner import run_pipeline

    config = load_pipeline_config(config_file, ["select.bliss.outer_stepz=3"])
    with pytest.raises(ConfigError, match="select: bliss: unknown key 'outer_stepz'"):
        run_pipeline(config)
    assert not (tmp_path / "run").exists()


def test_prepare_branch_checks_fractions_and_corpus(config_file, tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": "x"}) + "\n")
    base = ["pipeline", "--config", str(config_file), "shards=[]", "num_rounds=1"]
    assert main([*base, f"prepare.corpus=[{corpus}]", "fraction=1.5"]) == 2
    assert "fraction must be in (0, 1], got 1.5" in capsys.readouterr().err
    assert main([*base, "prepare.corpus=[nothing*.jsonl]"]) == 2
    assert "nothing*.jsonl: no input file matches" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
