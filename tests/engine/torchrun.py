"""Launch a test worker script on 2 CPU ranks under torchrun (gloo), as users launch training."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from megatron_bliss.engine.distributed import free_port
from megatron_bliss.utils.paths import REPO_ROOT


def run_two_ranks(worker: Path, *args: str) -> None:
    """Run ``worker ARGS`` on 2 ranks with one thread each; fail with the workers' stderr.

    The pytest process's own distributed variables are dropped so torchrun sets up a fresh world.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(free_port()), str(worker), *args,
    ]  # fmt: skip
    result = subprocess.run(
        command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
