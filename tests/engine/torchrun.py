"""Launch a test worker script on 2 CPU ranks under torchrun (gloo), as users launch training."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from megatron_bliss.engine.distributed import free_port
from megatron_bliss.utils.paths import REPO_ROOT
from tests.child_env import child_env


def run_two_ranks(
    worker: Path, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``worker ARGS`` on 2 ranks with one thread each (``env``: extra variables); with
    ``check``, fail with the workers' stderr unless they succeed.

    The pytest process's own distributed variables are dropped so torchrun sets up a fresh world.
    """
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(free_port()), str(worker), *args,
    ]  # fmt: skip
    result = subprocess.run(
        command, env=child_env(**(env or {})), cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert not check or result.returncode == 0, result.stderr[-4000:]
    return result
