"""The pipeline's SPMD agreement steps on 2 gloo ranks (mp.spawn, no model): rank 0 decides and
the others follow, rank-0-only work is waited for by polling, and one rank's failure stops every
rank with one line instead of a hang."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from megatron_bliss.engine.distributed import free_port
from megatron_bliss.errors import ConfigError
from megatron_bliss.pipeline.world import PeerFailed, PipelineWorld


def _scenario(world: PipelineWorld, run_dir: str) -> dict:
    """What one rank sees; every step is a collective both ranks reach."""
    seen = {}
    seen["agreed"] = world.agree(lambda: f"decided on rank {world.rank}")
    seen["written"] = world.write(lambda: (time.sleep(0.2), "file")[1])
    seen["on_main"] = world.on_main("slow work", lambda: (time.sleep(2.5), world.rank)[1])
    try:
        world.agree(lambda: (_ for _ in ()).throw(ConfigError("bad key on rank 0")))
    except ConfigError as error:
        seen["agree_error"] = str(error)
    try:
        with world.stage("round 1 train"):
            if world.rank == 1:
                raise RuntimeError("rank 1 broke")
    except PeerFailed as error:
        seen["stage"] = f"PeerFailed: {error}"
    except RuntimeError as error:
        seen["stage"] = f"own: {error}"
    try:
        with world.stage("round 1 eval"):
            world.on_main("eval", lambda: (_ for _ in ()).throw(ValueError("eval broke")))
    except Exception as error:  # rank 0 its own error, rank 1 the same line from the note
        seen["eval"] = str(error)
    return seen


def _worker(rank: int, port: int, run_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    world = PipelineWorld.join("cpu")
    world.use_run_dir(run_dir)
    seen = _scenario(world, run_dir)
    with open(os.path.join(run_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(seen, handle)
    world.barrier()


@pytest.mark.slow
def test_two_ranks_agree_wait_and_stop_together(tmp_path):
    torch.multiprocessing.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for view in seen:
        assert view["agreed"] == "decided on rank 0" and view["written"] == "file"
        assert view["on_main"] == 0  # rank 0's result, handed to rank 1 after its poll
        assert view["agree_error"] == "bad key on rank 0"
        assert "eval broke" in view["eval"]
    assert seen[1]["stage"] == "own: rank 1 broke"
    assert seen[0]["stage"] == "PeerFailed: round 1 train: rank 1 failed (see its output); " + (
        "stopping every rank"
    )


def test_a_single_process_is_a_world_of_one(tmp_path):
    world = PipelineWorld()
    assert not world.spmd and world.agree(lambda: 3) == 3
    assert world.on_main("work", lambda: 4) == 4  # no files, no group
    with pytest.raises(ValueError, match="own"), world.stage("x"):
        raise ValueError("own")
    assert not (tmp_path / ".ranks").exists()
