"""Which ranks of a selection load the target model: those that run ``fit`` (the selection
group, or every rank when the group is the job), never the ranks that only score."""

from __future__ import annotations

import pytest
import torch

from megatron_bliss.engine import distributed
from megatron_bliss.errors import MissingFileError
from megatron_bliss.selection.group import SelectionGroup
from megatron_bliss.selection.run import target_for_this_rank

CPU = torch.device("cpu")


def test_a_rank_outside_the_group_does_not_load_the_target(monkeypatch, tmp_path):
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    outside = SelectionGroup(1, handle=object())  # ranks 0..0 train; this is rank 1
    assert target_for_this_rank(tmp_path / "no_such_model", outside, CPU) is None


@pytest.mark.parametrize("group", [SelectionGroup(2), SelectionGroup(1, handle=object())])
def test_ranks_that_fit_load_the_target(group, tmp_path):
    with pytest.raises(MissingFileError, match="target model not found"):  # it tried to load
        target_for_this_rank(tmp_path / "no_such_model", group, CPU)


def test_a_loaded_target_is_passed_through():
    model = torch.nn.Linear(2, 2)
    assert target_for_this_rank(model, SelectionGroup(1, handle=object()), CPU) is model
