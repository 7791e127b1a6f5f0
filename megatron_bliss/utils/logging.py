"""One logging set-up for every command: rank-aware, quiet on non-zero ranks."""

from __future__ import annotations

import logging
import warnings

from megatron_bliss.utils.launcher_env import launched_rank, launched_world_size


def setup_logging(level: int = logging.INFO, part: str | None = None) -> None:
    """``part``: this process belongs to that part of a split job (``RANK`` is its rank there),
    so the part's rank 0 logs too."""
    rank = launched_rank()
    prefix = f"[rank {rank}] " if launched_world_size() > 1 else ""
    if part is not None:
        prefix = f"[{part} rank {rank}] "
    logging.basicConfig(
        level=level if rank == 0 else logging.WARNING,
        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    for noisy in ("DeepSpeed", "torch.distributed", "datasets", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
