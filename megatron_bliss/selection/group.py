"""The ranks a selector trains on (``group_size``): a sub-group of the job, scoring on all ranks.

In one multi-node job the selector's own training (BLISS's proxy and score model) needs few
devices and many steps, while scoring the next shard is embarrassingly parallel. So ``fit`` runs
data-parallel on the first ``group_size`` ranks (default: the ranks of one node), with every
collective on that group only (``torch.distributed.new_group``); the other ranks wait by polling
a file (an hour of selector training must not trip the process group's timeout), receive what
``fit`` made (``Selector.fitted_state``) and then every rank scores its slice of the shard.

While a group is active (``SelectionGroup.active``), ``hypergrad.world_size`` and its reductions
mean the group's; scoring keeps using the whole job. Without torch.distributed, or
with ``group_size`` covering every rank, the group is the job and nothing changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist

from megatron_bliss.engine import distributed
from megatron_bliss.errors import ConfigError
from megatron_bliss.utils.launcher_env import local_world_size

_ACTIVE: SelectionGroup | None = None


@dataclass(frozen=True)
class SelectionGroup:
    """Global ranks ``0 .. size-1`` of the job (so a member's rank in the group is its global
    rank), and their process group (None: the default group, i.e. the group is the whole job)."""

    size: int
    handle: Any = None

    @property
    def is_job(self) -> bool:
        return self.handle is None

    @property
    def is_member(self) -> bool:
        return distributed.rank() < self.size

    @property
    def fits_here(self) -> bool:
        """Whether this rank runs ``fit`` (every rank when the group is the job)."""
        return self.is_job or self.is_member

    @contextlib.contextmanager
    def active(self) -> Iterator[SelectionGroup]:
        """The block's collectives (``hypergrad``) run on this group (on a member; nothing
        changes on the other ranks)."""
        global _ACTIVE
        if not self.is_member:
            yield self
            return
        previous, _ACTIVE = _ACTIVE, self
        try:
            yield self
        finally:
            _ACTIVE = previous


def make_group(group_size: int | None, where: str = "group_size") -> SelectionGroup:
    """The first ``group_size`` ranks (None: one node's, ``LOCAL_WORLD_SIZE``); every rank of the
    job must call this (``new_group`` is collective)."""
    world = distributed.world_size()
    size = group_size if group_size is not None else local_world_size()
    if size < 1:
        raise ConfigError(f"{where}: must be >= 1, got {size}")
    size = min(size, world)
    if size == world:
        return SelectionGroup(world)
    return SelectionGroup(size, dist.new_group(list(range(size))))


def group_world_size() -> int:
    return _ACTIVE.size if _ACTIVE is not None else distributed.world_size()


def group_handle() -> Any:
    return _ACTIVE.handle if _ACTIVE is not None else None


def fit_on_group(selector, group: SelectionGroup, sync_dir: Path) -> None:
    """``selector.fit()`` on the group's ranks; the others wait (polling ``sync_dir``) and load
    what the group's rank 0 made, so that every rank can score."""
    if group.is_job:
        selector.fit()
        return
    ready, failed = sync_dir / ".fit.done", sync_dir / ".fit.failed"
    job = distributed.DistributedContext(distributed.rank(), distributed.world_size())
    if job.is_main:
        sync_dir.mkdir(parents=True, exist_ok=True)
        ready.unlink(missing_ok=True)
    with distributed.rank0_failure_note(failed, job):  # clears an earlier note, then a barrier
        if group.is_member:
            with group.active():
                selector.fit()
            if job.is_main:
                ready.write_text("ok\n")
        else:
            distributed.wait_for_rank0(ready, failed, "selector training on the selection group")
    state = [selector.fitted_state() if job.is_main else None]
    dist.broadcast_object_list(state, src=0)
    if not group.is_member:
        selector.load_fitted_state(state[0])
