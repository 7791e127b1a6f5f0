"""What every selector asks its context: the target's model family, with one rule for all
(the loaded target decides, else the preset, else a one-line error)."""

from __future__ import annotations

import types

import pytest

from megatron_bliss.errors import ConfigError, InputError
from megatron_bliss.selection.base import SelectionContext


def context(tmp_path, model=None, preset=None) -> SelectionContext:
    return SelectionContext(pool=None, run_dir=tmp_path, target_model=model, model_preset=preset)


def fake_model(model_type: str):
    return types.SimpleNamespace(config=types.SimpleNamespace(model_type=model_type))


def test_the_loaded_target_decides_the_family_over_the_preset_name(tmp_path):
    assert context(tmp_path, fake_model("llama"), "pythia-1b").target_family() == "llama"
    assert context(tmp_path, fake_model("gpt_neox"), "llama-0.5b").target_family() == "pythia"
    assert context(tmp_path, preset="llama-tiny").target_family() == "llama"


def test_an_unknown_family_stops_with_one_line(tmp_path):
    with pytest.raises(InputError, match="unsupported target model type 'gpt2'"):
        context(tmp_path, fake_model("gpt2"), "pythia-1b").target_family()
    with pytest.raises(ConfigError, match="family is unknown"):
        context(tmp_path).target_family()


def test_proxies_and_regressors_follow_that_family(tmp_path):
    from megatron_bliss.selection.mates import MatesSelector
    from megatron_bliss.selection.proxy import resolve_proxy_preset

    llama = context(tmp_path, fake_model("llama"), "pythia-1b")
    assert MatesSelector(MatesSelector.Config(), llama).regressor_preset() == "llama-tiny"
    assert resolve_proxy_preset("auto", llama.target_family()) == "llama-tiny"
