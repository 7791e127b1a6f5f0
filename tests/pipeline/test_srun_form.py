"""The srun form of a launch script (``slurm_pretrain.sbatch``): no torchrun, each task started
with only SLURM's variables, as ``srun`` starts one task per GPU. Two tasks on "two nodes" of one
task each (``SLURM_NTASKS_PER_NODE=1(x2)``) run a 1-round BLISS recipe: ranks come from
``SLURM_PROCID``, and the selection group, one node's tasks, is rank 0 while both ranks score."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from megatron_bliss.engine.distributed import free_port
from megatron_bliss.utils.paths import REPO_ROOT
from tests.child_env import child_env
from tests.pipeline.test_spmd_recipe import WORKER
from tests.pipeline.test_two_nodes import bliss_recipe, wait_for_all


def start_task(task: int, port: int, config) -> subprocess.Popen:
    env = child_env(
        SLURM_PROCID=str(task), SLURM_NTASKS="2", SLURM_LOCALID="0",
        SLURM_NTASKS_PER_NODE="1(x2)", SLURM_JOB_NODELIST="127.0.0.1",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(config)], cwd=REPO_ROOT, env=env,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.slow
def test_srun_tasks_run_the_recipe(tiny_shard, tokenizer_dir, corpus_texts, tmp_path):
    run_dir, config = bliss_recipe(tmp_path, tiny_shard, tokenizer_dir, corpus_texts)
    port = free_port()
    wait_for_all([start_task(task, port, config) for task in (0, 1)])

    summary = json.loads((run_dir / "pipeline.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    meta = json.loads((run_dir / "round_1/selection.json").read_text())
    assert meta["ranks"] == {"training": 1, "scoring": 2}
