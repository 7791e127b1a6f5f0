"""The pipeline's ranks as one SPMD job: every rank runs every stage, rank 0 decides and writes.

Started under torchrun, srun or the deepspeed launcher (``utils.launcher_env``), every rank runs
the pipeline. The process group is made once (``engine.distributed.init_distributed``) and kept
for every stage. Rank 0 alone reads the stage markers and writes the shared files (markers,
selections, summaries); its decisions reach the others by broadcast, and its files are read only
after a barrier, so every rank sees the same run. Work that only rank 0 does (data preparation,
evaluation, a selector that is not data-parallel) is waited for by polling a file rather than
inside a collective, so an hour of evaluation never trips the process group's timeout. After
each stage the ranks agree on whether any of them failed, so an error on one rank ends every
rank with one line instead of leaving them in a collective until its timeout.

A plain single process is a world of one: every call below is then a direct call.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from megatron_bliss.errors import UserError
from megatron_bliss.utils.launcher_env import launched_world_size

logger = logging.getLogger(__name__)

T = TypeVar("T")

SYNC_DIR = ".ranks"
"""Under a run directory: the files rank 0 leaves for the ranks waiting on it (``on_main``)."""

FAILED_RANK_WAIT = datetime.timedelta(seconds=60)
"""How long a failed rank waits for the others to hear of its failure before it exits anyway
(they may be inside a collective it will never join; its exit then ends them via the launcher)."""


class PeerFailed(UserError):
    """Another rank failed in this stage: this rank stops too (the cause is in that rank's
    output, one line, or its traceback)."""


class PipelineWorld:
    """Rank, world size and the agreement steps of one pipeline run."""

    def __init__(self, rank: int = 0, world_size: int = 1, part=None):
        self.rank = rank
        self.world_size = world_size
        self.part = part
        """``engine.distributed.JobPart`` when the launched job was split (``overlap.py``): this
        world is then that part's ranks only."""
        self.sync_dir: Path | None = None
        """Where ``on_main`` leaves its files: ``RUN_DIR/SYNC_DIR`` (see ``use_run_dir``)."""

    def use_run_dir(self, run_dir: str | Path) -> None:
        self.sync_dir = Path(run_dir) / SYNC_DIR

    @classmethod
    def join(cls, device_type: str, selection_ranks: int | None = None) -> PipelineWorld:
        """The launched world (the process group is made now, once, for every stage), or a
        world of one for a plain process. ``selection_ranks``: split the launched job, and
        join this rank's part (the last ``selection_ranks`` ranks select, ``overlap.py``)."""
        from megatron_bliss.engine.distributed import init_distributed, init_part

        if selection_ranks is not None:
            from megatron_bliss.pipeline.overlap import PARTS

            context, part = init_part(device_type, selection_ranks, PARTS)
            return cls(context.rank, context.world_size, part)
        if launched_world_size() == 1 and not _group_exists():
            return cls()
        context = init_distributed(device_type)
        if context.world_size == 1:  # a group of one (an earlier in-process stage made it)
            return cls()
        logger.info("pipeline: %d ranks, one SPMD job", context.world_size)
        return cls(context.rank, context.world_size)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def spmd(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.spmd:
            import torch.distributed as dist

            from megatron_bliss.engine.distributed import host_group

            dist.barrier(group=host_group())

    def agree(self, decide: Callable[[], T]) -> T:
        """``decide()`` on rank 0, its value (or its exception) on every rank: e.g. whether a
        stage is finished, so all ranks skip or run it alike."""
        if not self.spmd:
            return decide()
        value, error = None, None
        if self.is_main:
            try:
                value = decide()
            except Exception as caught:  # handed to every rank, raised everywhere alike
                error = caught
        value, error = self._broadcast((value, _picklable(error)))
        if error is not None:
            raise error
        return value

    def on_main(self, what: str, work: Callable[[], T]) -> T:
        """``work()`` on rank 0 while the others poll for its end (no collective timeout, however
        long it takes); rank 0's result, or its error as one line, on every rank."""
        if not self.spmd:
            return work()
        from megatron_bliss.engine.distributed import wait_for_rank0

        name = what.replace(" ", "_")
        ready, failed = self._sync_file(f"{name}.done"), self._sync_file(f"{name}.failed")
        if self.is_main:
            ready.unlink(missing_ok=True)
            failed.unlink(missing_ok=True)
        self.barrier()  # nobody reads a file left by an earlier attempt
        value = None
        if self.is_main:
            try:
                value = work()
            except Exception as error:
                failed.write_text(f"{what}: {error}".replace("\n", " ") + "\n")
                raise
            ready.write_text("ok\n")
        else:
            wait_for_rank0(ready, failed, what)
        return self._broadcast(value)

    def write(self, write: Callable[[], T]) -> T:
        """Shared files written once, by rank 0, that every rank may read when this returns
        (quick writes: the others wait in the broadcast of rank 0's result)."""
        return self.agree(write)

    @contextlib.contextmanager
    def stage(self, what: str) -> Iterator[None]:
        """Around one stage on every rank: if it raised on any rank, every rank stops, the
        failed ones with their own error, the others with ``PeerFailed`` naming them."""
        try:
            yield
        except Exception:
            self._failed_ranks(failed=True)
            raise
        failed = self._failed_ranks(failed=False)
        if failed:
            ranks = ", ".join(str(r) for r in failed)
            raise PeerFailed(f"{what}: rank {ranks} failed (see its output); stopping every rank")

    # ------------------------------------------------------------------ helpers
    def _failed_ranks(self, failed: bool) -> list[int]:
        if not self.spmd:
            return []
        import torch
        import torch.distributed as dist

        from megatron_bliss.engine.distributed import host_group

        flags = torch.zeros(self.world_size, dtype=torch.int64)
        flags[self.rank] = int(failed)
        work = dist.all_reduce(flags, group=host_group(), async_op=True)
        if not failed:
            work.wait()
            return [r for r, flag in enumerate(flags.tolist()) if flag]
        try:
            work.wait(timeout=FAILED_RANK_WAIT)
        except RuntimeError:  # the others are busy in a collective: the launcher ends them
            logger.warning("rank %d failed; the other ranks did not answer", self.rank)
        return []

    def _broadcast(self, value: T) -> T:
        import torch.distributed as dist

        from megatron_bliss.engine.distributed import host_group

        box = [value]
        dist.broadcast_object_list(box, src=0, group=host_group())
        return box[0]

    def _sync_file(self, name: str) -> Path:
        if self.sync_dir is None:
            raise RuntimeError("PipelineWorld.sync_dir is not set")
        self.sync_dir.mkdir(parents=True, exist_ok=True)
        return self.sync_dir / name


def _picklable(error: Exception | None) -> Exception | None:
    """``error`` as it can cross to the other ranks (an exception that does not pickle becomes a
    RuntimeError with its message)."""
    import pickle

    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def _group_exists() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()
