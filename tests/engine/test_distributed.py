"""Waiting on rank 0's output through the filesystem rather than a collective with a timeout."""

from __future__ import annotations

import threading

import pytest

from megatron_bliss.engine.distributed import (
    DistributedContext,
    rank0_failure_note,
    wait_for_rank0,
)


def test_wait_returns_once_rank0_output_appears(tmp_path):
    ready, failed = tmp_path / "converted", tmp_path / ".converted.failed"
    timer = threading.Timer(0.2, ready.mkdir)
    timer.start()
    wait_for_rank0(ready, failed, "conversion", poll_seconds=0.01)
    timer.join()
    assert ready.is_dir()


def test_rank0_failure_is_raised_on_the_waiting_rank(tmp_path):
    ready, failed = tmp_path / "converted", tmp_path / ".converted.failed"
    timer = threading.Timer(0.1, failed.write_text, args=("ckpt/global_step4: no optimizer\n",))
    timer.start()
    with pytest.raises(ValueError, match=r"^ckpt/global_step4: no optimizer$"):
        wait_for_rank0(ready, failed, "conversion", poll_seconds=0.01)
    timer.join()


def test_rank0_failure_note_is_written_for_the_other_ranks(tmp_path):
    failed = tmp_path / "cache" / ".index.failed"
    failed.parent.mkdir()
    failed.write_text("stale note of an earlier run\n")
    rank0 = DistributedContext(rank=0, world_size=2)  # no process group: the barrier is a no-op
    with pytest.raises(KeyError), rank0_failure_note(failed, rank0):
        raise KeyError("shard/x.bin: broken")
    assert failed.read_text() == "'shard/x.bin: broken'\n"
    with rank0_failure_note(failed, rank0):
        assert not failed.exists()  # removed before the work starts
