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


@pytest.mark.slow
def test_two_nodes_run_a_two_round_bliss_recipe(tiny_shard, tokenizer_dir, corpus_texts, tmp_path):
    target = tmp_path / "target.jsonl"
    target.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus_texts[-8:]))
    run_dir, config = tmp_path / "run", tmp_path / "pretrain.yaml"
    write_pretrain_yaml(
        config, run_dir, tiny_shard, str(tokenizer_dir), target, method="bliss", num_rounds=2,
        eval={"enabled": False},
    )  # fmt: skip
    port = free_port()
    nodes = [start_node(rank, port, config) for rank in (0, 1)]
    errors = [node.communicate(timeout=600)[1] for node in nodes]
    for node, err in zip(nodes, errors):
        assert node.returncode == 0, err[-4000:]

    summary = json.loads((run_dir / "pipeline.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    for r in (1, 2):
        meta = json.loads((run_dir / f"round_{r}/selection.json").read_text())
        assert meta["method"] == "bliss"
        assert meta["ranks"] == {"training": 1, "scoring": 2}
        assert summary["rounds"][r]["flops"]["selector_training"] > 0
    assert "trains on ranks 0-0, scores on all 2" in errors[0]
