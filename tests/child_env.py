"""The environment of a child process the tests start: the pytest process's own distributed
variables are dropped (an in-process test may have set them, and its process group may still hold
that MASTER_PORT), so the child sets up a world of its own."""

from __future__ import annotations

import os

DISTRIBUTED_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    for name in DISTRIBUTED_VARIABLES:
        env.pop(name, None)
    env.update(extra)
    return env
