"""A torch.profiler window over chosen training steps (``logging.profile_steps``).

Why: MFU and the engine/plain-loop throughput ratio are only improved by seeing where a step's time
goes (kernels, copies, collectives, ZeRO hooks). A window of a few steps after warm-up keeps the
trace small; each rank writes its own Chrome trace (``RUN_DIR/profile/rank{R}.json``, open it in
Perfetto or chrome://tracing), and rank 0 also writes the operator table sorted by self time
(``RUN_DIR/profile/ops_rank0.txt``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from megatron_bliss.utils.io import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)


class StepProfiler:
    """Starts before step ``first`` and stops after step ``last`` (1-based, inclusive)."""

    def __init__(self, steps: list[int], run_dir: Path, rank: int, device_type: str):
        self.first, self.last = (int(steps[0]), int(steps[1])) if steps else (0, -1)
        self.folder = Path(run_dir) / "profile"
        self.rank = rank
        self.device_type = device_type
        self.profiler: torch.profiler.profile | None = None

    def before_step(self, step: int) -> None:
        if step != self.first or self.profiler is not None:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device_type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(activities=activities, record_shapes=True)
        self.profiler.start()
        logger.info("profiling steps %d-%d into %s", self.first, self.last, self.folder)

    def after_step(self, step: int) -> None:
        if self.profiler is not None and step >= self.last:
            self._finish()

    def close(self) -> None:
        """Ends a window the run left early (interrupted, or fewer steps than ``last``)."""
        if self.profiler is not None:
            self._finish()

    def _finish(self) -> None:
        profiler, self.profiler = self.profiler, None
        profiler.stop()
        trace = self.folder / f"rank{self.rank}.json"
        with atomic_path(trace) as temporary:
            profiler.export_chrome_trace(str(temporary))
        if self.rank == 0:
            sort_by = (
                "self_cuda_time_total" if self.device_type == "cuda" else "self_cpu_time_total"
            )
            table = profiler.key_averages().table(sort_by=sort_by, row_limit=40)
            atomic_write_text(self.folder / "ops_rank0.txt", table + "\n")
        logger.info("profile written: %s", trace)
