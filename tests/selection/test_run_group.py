"""Which ranks of a selection load the target model: those that run ``fit`` (the selection
group, or every rank when the group is the job), never the ranks that only score."""

from __future__ import annotations

from pathlib import Path

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


def _rank0_value_worker(rank: int, port: int, out_dir: str) -> None:
    from megatron_bliss.selection.run import rank0_value

    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    value = rank0_value(1.0 if rank == 0 else 0.0)  # rank 1 never ran the shift test
    (Path(out_dir) / f"rank{rank}.txt").write_text(repr(value))
    torch.distributed.destroy_process_group()


def test_every_rank_selects_with_rank0s_temperature(tmp_path):
    from tests.selection.test_bliss_distributed import _free_port

    torch.multiprocessing.spawn(
        _rank0_value_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True
    )
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)] == ["1.0", "1.0"]
