"""Learning-rate schedules as pure functions of the optimizer step.

A pure function of the step means resume restores the schedule by restoring the step, and the
pipeline can state a round's schedule in the config alone (BLISS: constant ``1e-3 * 0.5**round``
after warm-up, MATES: constant 1e-3, evaluation checkpoints get a short final decay).
"""

from __future__ import annotations

import math

from megatron_bliss.engine.config import ScheduleConfig


def learning_rate(
    step: int, schedule: ScheduleConfig, peak_lr: float, min_lr: float, total_steps: int
) -> float:
    """The learning rate used for optimizer step ``step`` (0-based) of a ``total_steps`` run."""
    peak = peak_lr * schedule.lr_multiplier
    floor = min_lr * schedule.lr_multiplier
    step = step - schedule.start_step
    warmup = schedule.warmup_steps
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if schedule.type == "cosine":
        span = max(1, total_steps - schedule.start_step - warmup)
        progress = min(1.0, max(0, step - warmup) / span)
        return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
    decay_begin = total_steps - schedule.start_step - schedule.decay_steps
    if schedule.decay_steps <= 0 or step < decay_begin:
        return peak
    into = step - decay_begin + 1
    if schedule.decay_style == "halving":
        return max(floor, peak * 0.5 ** (into / schedule.halving_steps))
    progress = min(1.0, into / schedule.decay_steps)
    if schedule.decay_style == "cosine":
        return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
    return peak + (floor - peak) * progress
