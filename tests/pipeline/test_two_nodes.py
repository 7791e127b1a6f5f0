"""Two "nodes" on localhost, one rank each (``torchrun --nnodes 2 --node_rank {0,1}`` with its
rendezvous on 127.0.0.1, as each node of a cluster starts it): one job runs the warm-up and 2
BLISS rounds; BLISS trains on node 0's rank (the default selection group: one node's ranks)
while both ranks score, and the other node's rank receives the trained score model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_bliss.engine.distributed import free_port
from megatron_bliss.utils.paths import REPO_ROOT
from tests.child_env import child_env
from tests.pipeline.test_spmd_recipe import WORKER, write_pretrain_yaml


def start_node(node_rank: int, port: int, config: Path) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank",
        str(node_rank), "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port",
        str(port), str(WORKER), str(config),
    ]  # fmt: skip
    return subprocess.Popen(
        command, cwd=REPO_ROOT, env=child_env(), stderr=subprocess.PIPE, text=True
    )


def bliss_recipe(folder: Path, shard: str, tokenizer_dir, corpus_texts, **selection):
    """``(run dir, pretrain.yaml)`` of a BLISS recipe on the tiny shard, without evaluation."""
    target = folder / "target.jsonl"
    target.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus_texts[-8:]))
    run_dir, config = folder / "run", folder / "pretrain.yaml"
    write_pretrain_yaml(
        config, run_dir, shard, str(tokenizer_dir), target, method="bliss",
        eval={"enabled": False}, **selection,
    )  # fmt: skip
    return run_dir, config


def wait_for_all(processes: list[subprocess.Popen]) -> list[str]:
    """Every process's stderr, once all have ended; fails with it unless each succeeded."""
    errors = [process.communicate(timeout=600)[1] for process in processes]
    for process, err in zip(processes, errors):
        assert process.returncode == 0, err[-4000:]
    return errors


@pytest.mark.slow
def test_two_nodes_run_a_two_round_bliss_recipe(tiny_shard, tokenizer_dir, corpus_texts, tmp_path):
    run_dir, config = bliss_recipe(tmp_path, tiny_shard, tokenizer_dir, corpus_texts, num_rounds=2)
    port = free_port()
    errors = wait_for_all([start_node(rank, port, config) for rank in (0, 1)])

    summary = json.loads((run_dir / "pipeline.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    for r in (1, 2):
        meta = json.loads((run_dir / f"round_{r}/selection.json").read_text())
        assert meta["method"] == "bliss"
        assert meta["ranks"] == {"training": 1, "scoring": 2}
        assert summary["rounds"][r]["flops"]["selector_training"] > 0
    assert "trains on ranks 0-0, scores on all 2" in errors[0]
