"""What the launcher told this process through its environment: rank, world size, local rank.

torchrun and the deepspeed launcher set ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; ``srun`` sets
``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``. Everything that needs these before (or
without) a process group reads them here: logging, device choice, the launch scripts' rank-0
data preparation, and the process-group start-up itself (``engine/distributed.py``). Pure
``os.environ`` reads, so the command line stays fast to start.
"""

from __future__ import annotations

import os


def _slurm(name: str) -> str | None:
    """A SLURM per-task variable, when ``srun`` launched this process and torch's are unset."""
    if "RANK" in os.environ or "SLURM_NTASKS" not in os.environ:
        return None
    return os.environ.get(name)


def launched_rank() -> int:
    return int(os.environ.get("RANK") or _slurm("SLURM_PROCID") or 0)


def launched_world_size() -> int:
    """The number of processes a launcher started (torchrun, deepspeed, srun), 1 for plain python."""
    return int(os.environ.get("WORLD_SIZE") or _slurm("SLURM_NTASKS") or 1)


def local_rank() -> int:
    """This process's index on its node (0 for plain python)."""
    return int(os.environ.get("LOCAL_RANK") or _slurm("SLURM_LOCALID") or 0)


def local_world_size() -> int:
    """Processes on this node: torchrun's ``LOCAL_WORLD_SIZE``, the deepspeed launcher's
    ``LOCAL_SIZE``, srun's tasks per node; else the whole world (one node)."""
    found = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE")
    if not found and _slurm("SLURM_NTASKS") is not None:
        found = _slurm_tasks_per_node()
    return int(found or launched_world_size())


def _slurm_tasks_per_node() -> str | None:
    """This job's tasks per node from ``SLURM_NTASKS_PER_NODE`` / ``SLURM_TASKS_PER_NODE``
    (``8(x4)``, ``2,1``: the first node's count)."""
    per_node = os.environ.get("SLURM_NTASKS_PER_NODE") or os.environ.get("SLURM_TASKS_PER_NODE")
    return (per_node or "").split("(")[0].split(",")[0] or None


def export_slurm_variables() -> None:
    """Under ``srun``, set torch's variables from SLURM's (``MASTER_ADDR``: the first node)."""
    if _slurm("SLURM_PROCID") is None:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    per_node = _slurm_tasks_per_node()
    if per_node is not None:  # as torchrun sets it: the selection group's default size
        os.environ.setdefault("LOCAL_WORLD_SIZE", per_node)
    if "MASTER_ADDR" not in os.environ:
        nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "")
        first = nodes.split(",")[0]
        if "[" in first:  # node[01-04] -> node01
            base, rest = first.split("[", 1)
            first = base + rest.split("-")[0].split(",")[0].rstrip("]")
        os.environ["MASTER_ADDR"] = first or "127.0.0.1"
    os.environ.setdefault("MASTER_PORT", "29500")
