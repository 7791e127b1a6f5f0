"""Overlapped selection (``selection.overlap: true``): round r+1 is selected while round r trains.

The launched job is split in two independent worlds (``engine.distributed.init_part``):

    training part   the first ranks: DeepSpeed trains round r on them alone; at
                    ``snapshot_fraction`` of the round the engine also writes its state to
                    ``round_r/snapshot/`` (``checkpoint.snapshot_step``) and goes on training
    selection part  the last ``group_size`` ranks: as soon as round r's snapshot exists they
                    select round r+1 from it (selector training and scoring, data-parallel on
                    their own ranks), while the training part is still in round r

At round r's end the training part waits only for what of round r+1's selection is unfinished
(logged), then trains on it in the same engine. The target a round selects with is thus
``1 - snapshot_fraction`` of a round staler than in the sequential recipe; ``selection.json``
records its step (``target``).

No collective spans the two parts (DeepSpeed's checkpoint barriers and ZeRO collectives run on
the default group, which is each part's own). They talk through the launch's rendezvous store
(``PartLink``): the training part posts the prepared config and each round's target snapshot;
the selection part posts each finished selection. A stage failure on either part is posted too,
so the other part stops with one line instead of waiting for a message that never comes.
Stage markers are as in the sequential recipe: a killed job resumes where each part stopped
(the selection part's finished rounds are skipped; the training part re-offers the snapshots
of the rounds it already trained).
"""

from __future__ import annotations

import contextlib
import logging
import math
import pickle
import time
from collections.abc import Iterator
from typing import Any

from megatron_bliss.engine.distributed import JobPart
from megatron_bliss.engine.hooks import Hooks
from megatron_bliss.errors import ConfigError
from megatron_bliss.pipeline.world import PeerFailed, PipelineWorld

logger = logging.getLogger(__name__)

TRAIN, SELECT = "train", "select"
PARTS = (TRAIN, SELECT)
"""The names of the two parts, in launched-rank order (selection on the last ranks)."""

FAILED = "failed"


class PartLink:
    """Messages between the two parts, through the launch's store: rank 0 of a part posts, every
    rank of the other part polls (never a blocking store call, so an hour-long round trips no
    timeout)."""

    def __init__(self, world: PipelineWorld, part: JobPart, prefix: str = "overlap/"):
        self.world = world
        self.part = part
        self.prefix = prefix

    def post(self, key: str, value: Any) -> None:
        if self.world.is_main:
            self.part.store.set(self.prefix + key, pickle.dumps(value))

    def wait(self, key: str, what: str, poll_seconds: float = 2.0) -> Any:
        """The value posted under ``key``; logs every minute while waiting, and raises
        ``PeerFailed`` if the other part posts a failure (or its store is gone) meanwhile."""
        store, name = self.part.store, self.prefix + key
        started = last_report = time.monotonic()
        interval = 0.05
        while not self._check(name):
            if self._check(self.prefix + FAILED):
                raise PeerFailed(self._read(FAILED))
            if time.monotonic() - last_report >= 60:
                last_report = time.monotonic()
                logger.info("waiting for %s (%.0f s)", what, last_report - started)
            time.sleep(interval)
            interval = min(2 * interval, poll_seconds)
        waited = time.monotonic() - started
        if waited >= 1:
            logger.info("waited %.1f s for %s", waited, what)
        return pickle.loads(store.get(name))

    @contextlib.contextmanager
    def failures(self) -> Iterator[None]:
        """Around a part's whole run: its error (one line) is posted for the other part."""
        try:
            yield
        except PeerFailed:
            raise
        except BaseException as error:
            message = f"{self.part.name} rank {self.world.rank}: {error}".replace("\n", " ")
            with contextlib.suppress(Exception):  # the store may be gone with the error
                self.part.store.set(self.prefix + FAILED, pickle.dumps(message))
            raise

    def _check(self, name: str) -> bool:
        try:
            return bool(self.part.store.check([name]))
        except Exception as error:  # the store's host (launched rank 0 or the agent) is gone
            raise PeerFailed(f"the other part of the job is gone ({error})") from None

    def _read(self, key: str) -> str:
        return pickle.loads(self.part.store.get(self.prefix + key))


def selection_ranks(overlap: bool, group_size: int | None, where: str) -> int | None:
    """How many launched ranks the selection part gets (None: no overlap, one world); at
    least one launched rank must be left to train."""
    if not overlap:
        return None
    from megatron_bliss.utils.launcher_env import launched_world_size, local_world_size

    ranks = group_size if group_size is not None else local_world_size()
    launched = launched_world_size()
    if not 1 <= ranks < launched:
        raise ConfigError(
            f"{where}: overlap: the selection part takes group_size={ranks} of the {launched} "
            "launched ranks; at least one must train (launch more ranks or set group_size)"
        )
    return ranks


def is_selection_part(world: PipelineWorld) -> bool:
    return world.part is not None and world.part.name == SELECT


def guarded(world: PipelineWorld):
    """Around a part's run: its failure is posted for the other part (nothing without parts)."""
    if world.part is None:
        return contextlib.nullcontext()
    return PartLink(world, world.part).failures()


def snapshot_step(start: int, end: int, fraction: float) -> int:
    """The step of a round (from ``start`` to ``end``) whose state the next selection uses."""
    return min(end, start + max(1, math.ceil(fraction * (end - start))))


class SnapshotHooks(Hooks):
    """A training stage's hooks (``inner``) plus ``offer(path)`` after its snapshot checkpoint."""

    def __init__(self, inner: Hooks | None, offer):
        super().__init__()
        self.inner = inner or Hooks()
        self.offer = offer
        self.stop_after_step = self.inner.stop_after_step
        self.stop_with_checkpoint = self.inner.stop_with_checkpoint

    def on_step_end(self, step, metrics):
        self.inner.on_step_end(step, metrics)

    def on_validation(self, step, metrics):
        self.inner.on_validation(step, metrics)

    def on_checkpoint(self, path):
        self.inner.on_checkpoint(path)

    def on_snapshot(self, path):
        self.inner.on_snapshot(path)
        self.offer(path)

    def on_train_end(self, summary):
        self.inner.on_train_end(summary)

    def on_engine_final(self, engine):
        self.inner.on_engine_final(engine)

    def should_stop(self, step):
        return self.inner.should_stop(step)
