"""Overlapped selection (``selection.overlap``): a 2-rank launch split into a 1-rank training part
and a 1-rank selection part runs the 2-round BLISS recipe, each round selected from the snapshot
of the round before; a rerun of the same command skips every stage."""

from __future__ import annotations

import json
import pickle
import threading
import time

import pytest

from megatron_bliss.config import from_dict
from megatron_bliss.engine.distributed import JobPart
from megatron_bliss.errors import ConfigError
from megatron_bliss.pipeline.config import PipelineConfig, check_pipeline_config
from megatron_bliss.pipeline.overlap import PartLink, selection_ranks, snapshot_step
from megatron_bliss.pipeline.world import PeerFailed, PipelineWorld
from tests.engine.torchrun import run_two_ranks
from tests.pipeline.test_spmd_recipe import WORKER, markers, write_pretrain_yaml


def test_the_snapshot_step_is_the_fraction_of_the_round_rounded_up():
    assert snapshot_step(0, 20, 0.5) == 10
    assert snapshot_step(20, 30, 0.25) == 23
    assert snapshot_step(20, 30, 1.0) == 30
    assert snapshot_step(4, 7, 0.01) == 5  # at least one step of the round


def test_overlap_leaves_at_least_one_launched_rank_to_train(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert selection_ranks(True, 1, "cfg") == 1
    assert selection_ranks(False, 2, "cfg") is None
    with pytest.raises(ConfigError, match="cfg: overlap: the selection part takes group_size=2"):
        selection_ranks(True, 2, "cfg")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"snapshot_fraction": 0.0}, "snapshot_fraction must be in"),
        ({"overlap": True, "selections_from": "runs/x"}, "nothing is selected"),
    ],
)
def test_overlap_settings_are_checked(values, message):
    config = from_dict(PipelineConfig, {"shards": ["a", "b"], **values})
    with pytest.raises(ConfigError, match=message):
        check_pipeline_config(config, "cfg")


def link_pair() -> tuple[PartLink, PartLink]:
    import torch.distributed as dist

    store = dist.HashStore()
    train = PartLink(PipelineWorld(), JobPart("train", store))
    select = PartLink(PipelineWorld(), JobPart("select", store))
    return train, select


def test_a_posted_value_reaches_the_waiting_part():
    train, select = link_pair()
    threading.Timer(0.2, lambda: train.post("target/0", {"step": 10})).start()
    assert select.wait("target/0", "the target", poll_seconds=0.05) == {"step": 10}


def test_a_failure_of_one_part_stops_the_other_waiting_part_with_its_message():
    train, select = link_pair()
    with pytest.raises(ValueError), select.failures():
        raise ValueError("bad target set")
    started = time.monotonic()
    with pytest.raises(PeerFailed, match="select rank 0: bad target set"):
        train.wait("selected/1", "round 1's selection", poll_seconds=0.05)
    assert time.monotonic() - started < 5
    assert pickle.loads(train.part.store.get("overlap/failed")).startswith("select")


@pytest.mark.slow
def test_overlapped_recipe_selects_each_round_from_the_snapshot_and_resumes(
    tiny_shard, tokenizer_dir, corpus_texts, tmp_path
):
    target = tmp_path / "target.jsonl"
    target.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus_texts[-8:]))
    config, run_dir = tmp_path / "pretrain.yaml", tmp_path / "run"
    write_pretrain_yaml(
        config, run_dir, tiny_shard, str(tokenizer_dir), target,
        method="bliss", num_rounds=2, overlap=True, group_size=1, snapshot_fraction=0.5,
    )  # fmt: skip
    finished = run_two_ranks(WORKER, str(config))
    assert "[select rank 0]" in finished.stderr and "[train rank 0]" in finished.stderr

    # warm-up: steps 1-4, snapshot at 2; round 1: steps 5-7, snapshot at 6
    for r, step in ((1, 2), (2, 6)):
        meta = json.loads((run_dir / f"round_{r}/selection.json").read_text())
        assert meta["target"] == {
            "checkpoints": f"round_{r - 1}/snapshot", "step": step, "snapshot": True,
            "snapshot_fraction": 0.5,
        }  # fmt: skip
        assert (run_dir / f"round_{r - 1}/snapshot/global_step{step}").is_dir()
    assert not (run_dir / "round_2/snapshot").exists()  # the last round selects nothing
    summary = json.loads((run_dir / "pipeline.json").read_text())
    assert [r["tokens"] for r in summary["rounds"]] == [4 * 4 * 32, 7 * 4 * 32, 10 * 4 * 32]

    done = markers(run_dir)
    run_two_ranks(WORKER, str(config))  # the same command again: every stage is skipped
    assert markers(run_dir) == done and len(done) == 8  # split, 3 x (select, train), eval
