"""Callbacks into a running ``pretrain``: what the pipeline and the tests observe and control.

Subclass ``Hooks`` (or pass callables to it). ``stop_after_step`` stops a run in-process right
after that step, either after the step's checkpoint was written (``stop_with_checkpoint=True``,
like a preemption with SIGTERM) or without writing one (like a hard kill). Either way the run ends
as a signal stop does: ``pretrain`` returns a summary marked ``interrupted`` (``stopped_by``:
``hook``), so the pipeline treats the stage as unfinished and a rerun resumes it.

Metrics passed to ``on_step_end`` hold the loss, throughput and memory only on logged steps
(``logging.log_interval``): reading the loss back from the device on every step would make the
host wait for the device on every step.

A run of several rounds continues in one engine: ``pretrain(config, hooks, next_round=...)``
calls ``next_round`` with a ``RoundEnd`` after each round's last step (its checkpoint written,
its summary final); it returns the next round (``NextRound``: that round's config and hooks) or
None to end the run. The engine then rebuilds its training data in place and trains on, with the
optimizer state, step, sample count and RNG states it holds, so the next round needs neither a
relaunch nor a checkpoint load. The engine knows nothing of what the hook does in between (the
pipeline evaluates the round and selects the next round's data there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from megatron_bliss.engine.config import PretrainConfig
    from megatron_bliss.engine.distributed import DistributedContext


class Hooks:
    """Default no-op callbacks; override methods or pass callables to the constructor."""

    def __init__(
        self,
        on_step_end: Callable[[int, dict[str, Any]], None] | None = None,
        on_checkpoint: Callable[[str], None] | None = None,
        on_train_end: Callable[[dict[str, Any]], None] | None = None,
        on_validation: Callable[[int, dict[str, Any]], None] | None = None,
        on_engine_final: Callable[[Any], None] | None = None,
        on_snapshot: Callable[[str], None] | None = None,
        stop_after_step: int | None = None,
        stop_with_checkpoint: bool = False,
    ):
        self._step_end = on_step_end
        self._checkpoint = on_checkpoint
        self._train_end = on_train_end
        self._validation = on_validation
        self._engine_final = on_engine_final
        self._snapshot = on_snapshot
        self.stop_after_step = stop_after_step
        self.stop_with_checkpoint = stop_with_checkpoint

    def on_step_end(self, step: int, metrics: dict[str, Any]) -> None:
        """After optimizer step ``step`` (1-based global step) with its logged metrics."""
        if self._step_end:
            self._step_end(step, metrics)

    def on_validation(self, step: int, metrics: dict[str, Any]) -> None:
        if self._validation:
            self._validation(step, metrics)

    def on_checkpoint(self, path: str) -> None:
        """After a checkpoint folder was completely written (all ranks)."""
        if self._checkpoint:
            self._checkpoint(path)

    def on_snapshot(self, path: str) -> None:
        """After the snapshot checkpoint (``checkpoint.snapshot_step``) was completely written."""
        if self._snapshot:
            self._snapshot(path)

    def on_train_end(self, summary: dict[str, Any]) -> None:
        if self._train_end:
            self._train_end(summary)

    def on_engine_final(self, engine) -> None:
        """With the live DeepSpeed engine after the last step, before it is released (on every
        rank; tests compare the engine's own forward with an export here)."""
        if self._engine_final:
            self._engine_final(engine)

    def should_stop(self, step: int) -> bool:
        """True when the run must stop after ``step`` (checked on every rank)."""
        return self.stop_after_step is not None and step >= self.stop_after_step


@dataclass(frozen=True)
class RoundEnd:
    """What the round-boundary hook gets when a round's last step is done."""

    step: int
    summary: dict[str, Any]
    """The finished round's summary (also ``run_dir/summary.json``), as ``pretrain`` returns it."""
    run_dir: Path
    checkpoint: Path | None
    """The checkpoint folder of this step (the round's target weights, for a selector to read)."""
    context: DistributedContext
    """Rank, world size, device and the process group of the training ranks."""
    engine: Any
    """The live DeepSpeed engine (e.g. to gather ZeRO-3 partitions); do not step it."""


@dataclass
class NextRound:
    """The round to train next in the same engine. Its config may differ from the running one
    only where a round does (``engine.rounds.IN_PLACE_CHANGES``: run directory, data sources,
    steps, schedule, learning rates, checkpoint and logging settings)."""

    config: PretrainConfig
    hooks: Hooks | None = None
    """The next round's hooks (default: keep the running ones)."""


class RoundBoundary(Protocol):
    def __call__(self, end: RoundEnd) -> NextRound | None: ...
