"""Launch a test worker script on 2 CPU ranks under torchrun (gloo), as users launch training."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from megatron_bliss.engine.distributed import free_port
from megatron_bliss.utils.paths import REPO_ROOT
from tests.child_env import child_env


def run_two_ranks(worker: Path, *args: str) -> None:
    """Run ``worker ARGS`` on 2 ranks with one thread each; fail with the workers' stderr.

    The pytest process's own distributed variables are dropped so torchrun sets up a fresh world.
    """
    env = child_env()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(free_port()), str(worker), *args,
    ]  # fmt: skip
    result = subprocess.run(
        command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
