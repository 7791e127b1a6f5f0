"""Eval metrics in TensorBoard, next to the training curves of the same run.

Training writes ``RUN_DIR/tensorboard/``; evaluation adds its own event file there, so one
TensorBoard shows loss and accuracy on the same step axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from megatron_bliss.eval.harness import headline_average


def eval_scalars(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``{"eval/<task>/<metric>": value}`` for every numeric metric (standard errors left out)."""
    scalars: dict[str, float] = {}
    for task, entry in results.items():
        for metric, value in entry.items():
            if metric.endswith("_stderr") or metric == "num_docs":
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                scalars[f"eval/{task}/{metric}"] = float(value)
    average, used, _ = headline_average(results)
    if average is not None:
        scalars[f"eval/headline_average/{len(used)}_tasks"] = average
    return scalars


def log_eval_metrics(run_dir: str | Path, step: int, results: dict[str, dict[str, Any]]) -> Path:
    """Append ``results`` (an ``eval.json`` dict) at ``step`` to ``RUN_DIR/tensorboard/``."""
    from torch.utils.tensorboard import SummaryWriter

    log_dir = Path(run_dir) / "tensorboard"
    writer = SummaryWriter(log_dir=str(log_dir), filename_suffix=".eval")
    try:
        for tag, value in eval_scalars(results).items():
            writer.add_scalar(tag, value, global_step=int(step))
    finally:
        writer.close()
    return log_dir
