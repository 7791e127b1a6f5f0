"""Rounds in one engine: ``pretrain(..., next_round=...)`` continues as a new engine that loads
the round's checkpoint would, and refuses a round that changes what the engine fixed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_bliss.engine.hooks import NextRound
from megatron_bliss.engine.rounds import check_in_place, fixed_changes
from megatron_bliss.engine.trainer import pretrain
from megatron_bliss.errors import ConfigError


def second_round(make_config, name: str, tiny_shard: str, selection) -> object:
    """Round 2: four more steps on every other sequence of the shard at half the LR."""
    changes = {"train.train_steps": 8, "schedule.lr_multiplier": 0.5, "data.selection": selection}
    return make_config(name, **changes)


@pytest.fixture
def every_other_sequence(tiny_shard, tmp_path):
    from megatron_bliss.data.pool import SequencePool

    path = tmp_path / "selection.npy"
    np.save(path, np.arange(0, len(SequencePool(tiny_shard, 32)), 2, dtype=np.int64))
    return path


def test_a_round_in_the_running_engine_trains_like_a_new_engine_loading_its_checkpoint(
    make_config, tiny_shard, every_other_sequence, monkeypatch
):
    import deepspeed

    engines = []
    initialize = deepspeed.initialize
    monkeypatch.setattr(deepspeed, "initialize", lambda **kw: engines.append(1) or initialize(**kw))
    ends = []

    def next_round(end):
        ends.append((end.step, end.checkpoint, torch.nn.functional.linear))
        if len(ends) == 1:
            return NextRound(second_round(make_config, "b", tiny_shard, every_other_sequence))
        return None

    first = make_config("a", **{"train.train_steps": 4})
    in_place = pretrain(first, next_round=next_round)
    assert len(engines) == 1
    assert [(step, folder.name) for step, folder, _ in ends] == [
        (4, "global_step4"),
        (8, "global_step8"),
    ]
    original_linear = ends[0][2]
    assert not getattr(original_linear, "__module__", "").startswith("deepspeed")

    alone = make_config("c", **{"train.train_steps": 4})
    pretrain(alone)
    reloaded = second_round(make_config, "d", tiny_shard, every_other_sequence)
    reloaded.checkpoint.load = str(Path(alone.run_dir) / "checkpoints")
    separate = pretrain(reloaded)

    assert in_place["final_step"] == separate["final_step"] == 8
    assert in_place["run_dir"].endswith("b") and len(in_place["losses"]) == 4
    assert in_place["consumed_tokens"] == separate["consumed_tokens"]
    np.testing.assert_allclose(in_place["losses"], separate["losses"], rtol=1e-6)


def test_a_round_may_change_its_data_steps_and_schedule_only(make_config):
    running = make_config("a")
    following = make_config("b", **{"train.train_steps": 9, "optimizer.lr": 1e-4})
    following.schedule.lr_multiplier = 0.25
    assert fixed_changes(running, following) == []
    check_in_place(running, following)

    wider = dataclasses.replace(running.train, micro_batch_size=4)
    changed = dataclasses.replace(following, train=wider)
    assert fixed_changes(running, changed) == ["train.micro_batch_size"]
    with pytest.raises(ConfigError, match=r"train\.micro_batch_size differs"):
        check_in_place(running, changed)
