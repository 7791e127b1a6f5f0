"""Process-group set-up that works the same under python, torchrun, the deepspeed launcher and srun.

A plain ``python`` process gets RANK=0/WORLD_SIZE=1 and a free MASTER_PORT; under ``srun`` the
SLURM variables are translated. ``pretrain`` may be called repeatedly in one process (the pipeline
does for a decay branch, or per round with ``launcher.keep_engine: false``). The default process
group is created once and reused by later calls: a destroyed-and-recreated group hangs
DeepSpeed's CPU shared-memory all-reduce and invalidates its cached groups, so the group is
destroyed only at interpreter exit (``atexit``).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatron_bliss.errors import InputError
from megatron_bliss.utils.launcher_env import (
    export_slurm_variables,
    launched_world_size,
    local_rank,
)
from megatron_bliss.utils.logging import setup_logging

logger = logging.getLogger(__name__)


def world_size() -> int:
    """Ranks in the default process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default process group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    created_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if dist.is_initialized() and self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        """Wait for all ranks; the process group itself stays for the next stage (see module doc)."""
        self.barrier()


def _destroy_at_exit() -> None:
    if dist.is_initialized():
        import deepspeed.comm

        deepspeed.comm.destroy_process_group()


def wait_for_rank0(ready: Path, failed: Path, what: str, poll_seconds: float = 2.0) -> None:
    """Block until rank 0 has made ``ready``, or raise its one-line message from ``failed``.

    Polls the shared filesystem instead of waiting in a collective: a long rank-0 job (a
    checkpoint conversion, an index build) must not outlast the process group's timeout. The
    interval starts at 50 ms and doubles up to ``poll_seconds``: a short wait ends at once, a long
    one costs the filesystem one look per rank every ``poll_seconds``.
    """
    started = last_report = time.monotonic()
    interval = min(0.05, poll_seconds)
    while not ready.exists():
        if failed.exists():
            raise InputError(failed.read_text().strip() or f"{what}: failed on rank 0")
        if time.monotonic() - last_report >= 60:
            last_report = time.monotonic()
            logger.info("waiting for rank 0: %s (%.0f s)", what, last_report - started)
        time.sleep(interval)
        interval = min(2 * interval, poll_seconds)


@contextlib.contextmanager
def rank0_failure_note(failed: Path, context: DistributedContext) -> Iterator[None]:
    """Around work rank 0 does while the other ranks ``wait_for_rank0``: a note left by an earlier
    attempt is removed first (everyone passes a barrier before reading), and rank 0's failure in
    the block is written to ``failed``, so the waiting ranks stop with the same line."""
    if context.is_main:
        failed.unlink(missing_ok=True)
    context.barrier()
    try:
        yield
    except Exception as error:
        if context.is_main and context.world_size > 1:
            failed.parent.mkdir(parents=True, exist_ok=True)
            failed.write_text(f"{error}\n")
        raise


def join_launched_group(device_type: str) -> DistributedContext | None:
    """Under a launcher, join the process group exactly as ``pretrain`` does (SLURM variables,
    timeout, backend); a plain single process stays without one (no DeepSpeed import)."""
    if launched_world_size() > 1 or dist.is_initialized():
        return init_distributed(device_type)
    return None


def init_distributed(device_type: str, timeout_minutes: float = 30.0) -> DistributedContext:
    """Join (or create) the default process group; gloo on CPU, nccl on GPUs."""
    created = not dist.is_initialized()
    if created:
        export_slurm_variables()
        defaults = {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
        }
        for name, value in defaults.items():
            if name not in os.environ:
                os.environ[name] = value
        if "MASTER_PORT" not in os.environ:
            os.environ["MASTER_PORT"] = str(free_port())
        _start_deepspeed(device_type, datetime.timedelta(minutes=timeout_minutes))
    return _this_rank(device_type, created)


def _backend(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def _start_deepspeed(device_type: str, timeout: datetime.timedelta) -> None:
    """DeepSpeed's communication over the default group (made here from the environment, or
    already made by the caller), destroyed at exit; the host-side gloo group with it."""
    import deepspeed

    deepspeed.init_distributed(
        dist_backend=_backend(device_type), auto_mpi_discovery=False, timeout=timeout
    )
    atexit.register(_destroy_at_exit)
    if dist.get_world_size() > 1:
        host_group()  # collective: every rank makes it now, not at its first use


def _this_rank(device_type: str, created: bool) -> DistributedContext:
    context = DistributedContext(rank(), world_size(), local_rank(), created_group=created)
    if device_type == "cuda":
        torch.cuda.set_device(context.local_rank)
        context.device = torch.device("cuda", context.local_rank)
    return context


@dataclass(frozen=True)
class JobPart:
    """One of the two worlds a launched job was split into (``init_part``): its name and the
    launch's store, which both parts share (the only channel between them: no collective ever
    spans the two)."""

    name: str
    store: Any = None


def init_part(
    device_type: str, last_ranks: int, names: tuple[str, str], timeout_minutes: float = 30.0
) -> tuple[DistributedContext, JobPart]:
    """Split the launched job into two independent worlds, the first ranks (``names[0]``) and
    the last ``last_ranks`` (``names[1]``), and join this rank's as the default process group.

    Each part then behaves as a job of its own (DeepSpeed, barriers and checkpoints see only its
    ranks), so one part can train while the other works on something else. The launch's
    rendezvous store (torchrun's agent store, or the one launched rank 0 hosts) is shared:
    each part's process group lives under its own prefix of it, and the parts exchange messages
    through it (``pipeline/overlap.py``). ``RANK``/``WORLD_SIZE`` become the part's.
    """
    if dist.is_initialized():
        raise RuntimeError("init_part: a process group already exists in this process")
    export_slurm_variables()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    job_rank, job_world = int(os.environ.get("RANK", 0)), launched_world_size()
    if not 1 <= last_ranks < job_world:
        raise InputError(
            f"splitting {job_world} launched ranks: the second part needs 1 to {job_world - 1} "
            f"ranks, got {last_ranks}"
        )
    first = job_world - last_ranks
    index = int(job_rank >= first)
    start, size = (0, first) if index == 0 else (first, last_ranks)
    timeout = datetime.timedelta(minutes=timeout_minutes)
    store, _, _ = next(
        dist.rendezvous("env://", rank=job_rank, world_size=job_world, timeout=timeout)
    )
    dist.init_process_group(
        _backend(device_type),
        store=dist.PrefixStore(f"part_{names[index]}/", store),
        rank=job_rank - start,
        world_size=size,
        timeout=timeout,
    )
    os.environ.update({"RANK": str(job_rank - start), "WORLD_SIZE": str(size)})
    setup_logging(part=names[index])  # the part's rank 0 logs as a job's rank 0 does
    os.environ.pop("LOCAL_SIZE", None)  # DeepSpeed's CPU shm op would take the node's ranks as ours
    if index == 1:  # the shm op names its segment after MASTER_PORT: each part has its own
        os.environ["MASTER_PORT"] = str(int(os.environ.get("MASTER_PORT", "29500")) + 1)
    _start_deepspeed(device_type, timeout)
    context = _this_rank(device_type, created=True)
    logger.info(
        "launched rank %d: rank %d of the %d-rank part '%s'",
        job_rank, context.rank, size, names[index],
    )  # fmt: skip
    return context, JobPart(names[index], store)


def exit_without_teardown(code: int) -> None:
    """Flush and leave now, skipping the interpreter's teardown: after a clean multi-rank run
    the C++ teardown occasionally aborts (stack notes, section 1), which would turn a finished
    run into a failed exit code."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def any_rank_signal(received: int, context: DistributedContext) -> int:
    """The largest signal number received on any rank (0: none), agreed without waiting for the
    device: a CPU tensor over gloo (a side group of the same ranks when the default is NCCL)."""
    if context.world_size == 1:
        return int(received)
    tensor = torch.tensor([int(received)], dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=host_group())
    return int(tensor.item())


_HOST_GROUP: list = []


def host_group():
    """A gloo group of all ranks for host-side values (None: the default group is gloo already);
    made once, with the process group, by every rank."""
    if dist.get_backend() == "gloo":
        return None
    if not _HOST_GROUP:
        _HOST_GROUP.append(dist.new_group(backend="gloo"))
    return _HOST_GROUP[0]


def all_reduce_mean(values: list[float] | torch.Tensor, context: DistributedContext) -> list[float]:
    """Mean over ranks of each value, as floats on the host."""
    tensor = torch.as_tensor(values, dtype=torch.float64)
    if context.world_size == 1:
        return tensor.tolist()
    tensor = tensor.to(context.device)
    dist.all_reduce(tensor)
    return (tensor / context.world_size).tolist()


def dry_run(context: DistributedContext) -> float:
    """Check the world with one all-reduce of ones; returns the sum (== world size)."""
    tensor = torch.ones(1, device=context.device)
    if dist.is_initialized():
        dist.all_reduce(tensor)
    total = float(tensor.item())
    if round(total) != context.world_size:
        raise RuntimeError(f"all-reduce gave {total}, expected the world size {context.world_size}")
    return total


class PreemptionFlag:
    """Records SIGTERM/SIGUSR1 so the loop can checkpoint and stop at the next step boundary."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> PreemptionFlag:
        try:
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: signals cannot be caught here
            logger.debug("signal handlers not installed (not the main thread)")
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signum
        logger.warning("received signal %d: checkpointing at the end of this step", signum)

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
