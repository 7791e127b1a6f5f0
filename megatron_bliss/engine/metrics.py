"""Training metrics: FLOPs per token, MFU against a device peak, and the metric sinks.

FLOPs per trained token come from the project's one FLOPs model (``models/flops.py``, the PaLM
appendix): ``6 * M`` for the matrix multiplies (M = parameters except the input embedding, a
lookup) plus ``12 * L * d * T`` for attention scores and values.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from megatron_bliss.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

# Dense peak FLOP/s per device: (bf16/fp16, fp32 incl. TF32 tensor cores), from vendor sheets.
GPU_PEAK_FLOPS: dict[str, tuple[float, float]] = {
    "H200": (989e12, 494e12),
    "H100": (989e12, 494e12),
    "A100": (312e12, 156e12),
    "L40S": (362e12, 183e12),
    "A10": (125e12, 62.5e12),
    "V100": (125e12, 15.7e12),
}


def flops_per_token(model_config, seq_length: int) -> float:
    """Training FLOPs (forward + backward) per token: 6M + 12 L d T (``models/flops.py``)."""
    from megatron_bliss.models.flops import training_flops_per_token

    return training_flops_per_token(model_config, seq_length)


def device_peak_flops(
    device: torch.device, precision: str, configured: float | None, cpu: float | None
) -> float:
    """Peak FLOP/s of one device: the configured value, a known GPU, else ``cpu``, else measured."""
    if configured:
        return float(configured)
    if device.type != "cuda":
        return float(cpu) if cpu else measured_matmul_flops(precision)
    name = torch.cuda.get_device_name(device)
    for key, (half, single) in GPU_PEAK_FLOPS.items():
        if key in name:
            return half if precision in ("bf16", "fp16") else single
    logger.warning("unknown GPU %s: MFU uses the A100 bf16 peak; set logging.peak_flops", name)
    return GPU_PEAK_FLOPS["A100"][0]


def measured_matmul_flops(precision: str, size: int = 1024, repeats: int = 5) -> float:
    """Best FLOP/s of a square matmul with this process's threads, in the run's precision.

    CPUs publish no dense peak for a given core and thread count, and a guessed constant gave MFU
    well above what the machine reaches; the fastest large matmul is the achievable peak instead.
    """
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator).to(dtype)
    right = torch.randn(size, size, generator=generator).to(dtype)
    torch.mm(left, right)  # first call: allocation and kernel selection
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(left, right)
        best = min(best, time.perf_counter() - started)
    peak = 2.0 * size**3 / max(best, 1e-9)
    logger.info("CPU peak for MFU: %.1f GFLOP/s (measured %s matmul)", peak / 1e9, dtype)
    return peak


def memory_stats(device: torch.device) -> dict[str, float]:
    """Peak accelerator memory (GiB) on GPU; the process's resident set size on CPU."""
    if device.type == "cuda":
        return {
            "mem_allocated_gb": torch.cuda.max_memory_allocated(device) / 2**30,
            "mem_reserved_gb": torch.cuda.max_memory_reserved(device) / 2**30,
        }
    try:
        with open("/proc/self/statm") as handle:
            resident_pages = int(handle.read().split()[1])
        return {"mem_rss_gb": resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**30}
    except (OSError, ValueError, IndexError):
        return {}


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records past the resumed step (logged by a run killed before its next checkpoint)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if int(record.get("step", 0)) <= last_step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


class MetricSink:
    """Rank 0's metrics.jsonl and TensorBoard writer (no-op on other ranks)."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.handle = None
        self.writer = None
        if not enabled:
            return
        self.handle = open(run_dir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        if self.writer is not None:
            step = int(record["step"])
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self.writer.add_scalar(
                        f"train/{key}" if key != "val_loss" else key, value, step
                    )

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
