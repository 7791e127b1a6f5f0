"""The profiling window: a Chrome trace per rank and rank 0's operator table, also when the run
ends inside the window; a malformed window is a one-line config error."""

from __future__ import annotations

import json

import pytest

from megatron_bliss.config import ConfigError
from megatron_bliss.engine.trainer import pretrain


def test_profile_window_writes_trace_and_operator_table(make_config, tmp_path):
    pretrain(make_config("window", **{"train.train_steps": 4, "logging.profile_steps": "[2, 3]"}))
    folder = tmp_path / "window" / "profile"
    events = json.loads((folder / "rank0.json").read_text())["traceEvents"]
    names = {event.get("name", "") for event in events}
    assert any(name.startswith("aten::mm") or name.startswith("aten::addmm") for name in names)
    table = (folder / "ops_rank0.txt").read_text()
    assert "Self CPU" in table and "aten::" in table
    assert not list(folder.glob("*.tmp"))


def test_run_ending_inside_the_window_still_writes_it(make_config, tmp_path):
    pretrain(make_config("short", **{"train.train_steps": 2, "logging.profile_steps": "[2, 9]"}))
    assert (tmp_path / "short" / "profile" / "rank0.json").exists()


@pytest.mark.parametrize("window", ["[3, 2]", "[0, 1]", "[4]"])
def test_malformed_window_is_a_config_error(make_config, window):
    with pytest.raises(ConfigError, match=r"logging\.profile_steps"):
        make_config(**{"logging.profile_steps": window})
