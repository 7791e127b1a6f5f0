"""A pretrain YAML's ``selection:`` section maps onto the pipeline's config in one place
(``pipeline/recipe.py``); ``SELECT`` turns it on, picks the method or turns it off; one training
stage (``pretrain``) leaves the section alone."""

from __future__ import annotations

import pytest

from megatron_bliss.config import read_yaml
from megatron_bliss.engine.config import load_pretrain_config
from megatron_bliss.errors import ConfigError
from megatron_bliss.pipeline.recipe import recipe_config, wanted_method

PAPER_CONFIGS = ["410m", "1b", "2p8b", "llama_0p5b"]


def pretrain_yaml(**section) -> dict:
    return {
        "run_dir": "runs/r",
        "model": {"preset": "pythia-tiny"},
        "data": {"prefix": "d/all_text_document", "tokenizer": "tok", "seq_length": 32},
        "train": {"train_steps": 99, "seed": 7, "global_batch_size": 4, "micro_batch_size": 2},
        "schedule": {"type": "cosine"},
        "selection": {"enabled": True, "shards": ["s0", "s1", "s2"], **section},
    }


def test_the_section_and_the_pretrain_part_become_one_pipeline_config():
    config = recipe_config(
        pretrain_yaml(num_rounds=2, round_steps=5, pretrain={"schedule": {"type": "constant"}}),
        "random",
    )
    assert (config.run_dir, config.seq_length, config.tokenizer, config.seed) == (
        "runs/r", 32, "tok", 7,
    )  # fmt: skip
    assert config.method == "random" and config.rounds() == 2 and config.round_steps == 5
    assert config.shards == ["s0", "s1", "s2"]
    part = config.pretrain
    assert "selection" not in part and "run_dir" not in part
    assert "prefix" not in part["data"] and "train_steps" not in part["train"]
    assert part["schedule"] == {"type": "constant"}  # the recipe's stages change it
    assert part["launcher"] == {"type": "inprocess"}  # the job itself is the world


@pytest.mark.parametrize(
    ("section", "select", "method"),
    [
        ({"enabled": True, "method": "dsir"}, None, "dsir"),
        ({"enabled": False, "method": "dsir"}, None, None),
        ({"enabled": False}, "mates", "mates"),
        ({"enabled": True}, "none", None),
        ({}, "", None),
        ({"enabled": True}, None, "bliss"),
    ],
)
def test_select_variable_overrides_the_section(section, select, method):
    assert wanted_method(section, select) == method


@pytest.mark.parametrize("key", ["seq_length", "tokenizer", "run_dir", "seed"])
def test_values_of_the_pretrain_part_are_not_repeated_in_the_section(key):
    with pytest.raises(ConfigError, match=f"selection.{key}: set by"):
        recipe_config(pretrain_yaml(**{key: 1}), "bliss")


def test_a_misspelt_section_key_is_one_line():
    with pytest.raises(ConfigError, match="unknown key 'num_round'"):
        recipe_config(pretrain_yaml(num_round=2), "bliss")


@pytest.mark.parametrize("name", ["tiny_cpu", *PAPER_CONFIGS])
def test_shipped_pretrain_configs_keep_plain_pretraining_and_map_their_recipe(name):
    path = f"configs/pretrain_{name}.yaml"
    load_pretrain_config(path, ["selection.method=random"])  # one stage ignores the section
    pretrain = read_yaml(path)
    section = pretrain["selection"]
    assert wanted_method(section, None) is None  # plain pretraining unless SELECT=METHOD
    shards = section.get("shards") or [f"s{k}" for k in range(section["num_rounds"] + 1)]
    pretrain["selection"] = {**section, "shards": shards}
    config = recipe_config(pretrain, wanted_method(section, "bliss"), path)
    assert config.method == "bliss" and config.fraction == 0.2 and config.lr_round_factor == 0.5
    if name != "tiny_cpu":  # the paper's recipe: 5 shards, the warm-up's and 4 rounds
        assert len(config.shards) == 5 and config.rounds() == 4


def test_selections_from_enables_the_recipe_with_the_source_runs_method_and_shards(tmp_path):
    import json

    source = tmp_path / "source"
    (source / "config.yaml").parent.mkdir()
    (source / "config.yaml").write_text("method: dsir\n")
    for r in range(3):
        (source / f"round_{r}").mkdir()
        meta = {"seq_length": 32, "data_prefix": f"src/shard{r}", "num_selected": 1}
        (source / f"round_{r}" / "selection.json").write_text(json.dumps(meta))
    section = {"enabled": False, "method": "bliss", "selections_from": str(source)}
    assert wanted_method(section, None) == "dsir"
    assert wanted_method(section, "none") is None  # SELECT=none still means plain pretraining
    pretrain = pretrain_yaml(**section, num_rounds=2)
    del pretrain["selection"]["shards"]
    config = recipe_config(pretrain, "dsir")
    assert config.shards == ["src/shard0", "src/shard1", "src/shard2"]
