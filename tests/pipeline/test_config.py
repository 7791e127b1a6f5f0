"""Pipeline config checks: the same rules whether shards are named or made from a raw corpus."""

from __future__ import annotations

import pytest

from megatron_bliss.config import ConfigError
from megatron_bliss.pipeline.config import load_pipeline_config

CORPUS = ["prepare.corpus=[c.jsonl]", "num_rounds=1"]
SHARDS = ["shards=[s0, s1]", "num_rounds=1"]


@pytest.mark.parametrize("source", [CORPUS, SHARDS], ids=["corpus", "shards"])
@pytest.mark.parametrize(
    "override, message",
    [
        ("fraction=1.5", r"fraction must be in \(0, 1\]"),
        ("warmup_fraction=0", r"warmup_fraction must be in \(0, 1\]"),
        ("pretrain.run_dir=x", "run directories are set by the pipeline"),
        ("lr_round_factor=-0.5", "lr_round_factor must be > 0"),
    ],
)
def test_checks_apply_to_both_shard_sources(source, override, message):
    with pytest.raises(ConfigError, match=message):
        load_pipeline_config(None, [*source, override])


def test_shard_sources():
    assert load_pipeline_config(None, CORPUS).prepare.corpus == ["c.jsonl"]
    with pytest.raises(ConfigError, match="not both"):
        load_pipeline_config(None, [*CORPUS, "shards=[s0, s1]"])
    with pytest.raises(ConfigError, match="needs 'num_rounds'"):
        load_pipeline_config(None, ["prepare.corpus=[c.jsonl]"])
    with pytest.raises(ConfigError, match="needs 3 shards"):
        load_pipeline_config(None, ["shards=[s0, s1]", "num_rounds=2"])
