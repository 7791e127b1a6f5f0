"""Numbers the report plots: loss curves on a tokens axis, accuracy per round, and the
tokens/FLOPs a method needs to reach random selection's accuracy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_bliss.eval.run_data import RoundData, RunData
from megatron_bliss.eval.task_specs import HEADLINE_TASKS, headline_metric


@dataclass
class LossCurve:
    train_tokens: np.ndarray
    train_loss: np.ndarray
    val_tokens: np.ndarray
    val_loss: np.ndarray
    round_ends: list[float]  # cumulative tokens at the end of each round


def _round_tokens(records: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train tokens, train loss, val tokens, val loss) of one round's ``metrics.jsonl``.

    Validation records without ``consumed_tokens`` get it from their step through the training
    records' step -> tokens mapping.
    """
    train = [r for r in records if "loss" in r and "consumed_tokens" in r]
    steps = np.array([r.get("step", i) for i, r in enumerate(train)], dtype=float)
    tokens = np.array([r["consumed_tokens"] for r in train], dtype=float)
    val_x, val_y = [], []
    for record in (r for r in records if "val_loss" in r):
        if "consumed_tokens" in record:
            val_x.append(float(record["consumed_tokens"]))
        elif len(steps) and "step" in record:
            val_x.append(float(np.interp(record["step"], steps, tokens)))
        else:
            continue
        val_y.append(float(record["val_loss"]))
    loss = np.array([r["loss"] for r in train], dtype=float)
    return tokens, loss, np.array(val_x), np.array(val_y)


def loss_curve(run: RunData) -> LossCurve:
    """All rounds on one cumulative tokens axis.

    A round whose ``consumed_tokens`` restart from zero (a fresh training stage) is shifted by the
    tokens seen before it; a round that continues the count is left as it is.
    """
    parts: list[tuple[np.ndarray, ...]] = []
    round_ends: list[float] = []
    offset = 0.0
    for round_data in run.rounds:
        tokens, loss, val_x, val_y = _round_tokens(round_data.metrics)
        if len(tokens) and tokens[0] < offset:
            tokens, val_x = tokens + offset, val_x + offset
        parts.append((tokens, loss, val_x, val_y))
        if len(tokens):
            offset = max(offset, float(tokens.max()))
        round_ends.append(offset)
    stacked = [np.concatenate([p[i] for p in parts]) if parts else np.zeros(0) for i in range(4)]
    return LossCurve(*stacked, round_ends=round_ends)


def common_tasks(runs: list[RunData]) -> list[str]:
    """Headline tasks evaluated in every round that has an eval.json, in every run."""
    evals = [r.eval for run in runs for r in run.rounds if r.eval]
    return [
        t
        for t in HEADLINE_TASKS
        if evals and all(headline_metric(t) in e.get(t, {}) for e in evals)
    ]


def round_accuracy(round_data: RoundData, tasks: list[str]) -> float | None:
    values = [round_data.eval.get(t, {}).get(headline_metric(t)) for t in tasks]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values and len(values) == len(tasks) else None


@dataclass
class AccuracyCurve:
    tokens: np.ndarray
    flops: np.ndarray | None  # cumulative FLOPs including selection; None when not recorded
    accuracy: np.ndarray


def accuracy_curve(run: RunData, tasks: list[str]) -> AccuracyCurve:
    """Average accuracy after each round against cumulative tokens and FLOPs."""
    round_ends = loss_curve(run).round_ends
    tokens, flops, accuracy = [], [], []
    cumulative_flops, flops_known = 0.0, True
    for position, round_data in enumerate(run.rounds):
        flops_known = flops_known and bool(round_data.flops)
        cumulative_flops += sum(round_data.flops.values())
        value = round_accuracy(round_data, tasks)
        token_count = round_data.tokens if round_data.tokens is not None else round_ends[position]
        if value is None or not token_count:
            continue
        tokens.append(float(token_count))
        flops.append(cumulative_flops)
        accuracy.append(value)
    return AccuracyCurve(
        np.array(tokens), np.array(flops) if flops_known else None, np.array(accuracy)
    )


def first_reach(x: np.ndarray, y: np.ndarray, target: float) -> float | None:
    """Smallest x at which the piecewise-linear curve (x, y) reaches ``target``; None if never."""
    for i in range(len(x)):
        if y[i] >= target:
            if i == 0 or y[i - 1] >= y[i]:
                return float(x[i])
            fraction = (target - y[i - 1]) / (y[i] - y[i - 1])
            return float(x[i - 1] + fraction * (x[i] - x[i - 1]))
    return None


def speedups(curves: dict[str, AccuracyCurve], baseline: str) -> tuple[float | None, dict]:
    """Target = the baseline's best accuracy; per run: tokens/FLOPs to reach it, and the ratio."""
    base = curves[baseline]
    if not len(base.accuracy):
        return None, {}
    target = float(base.accuracy.max())
    base_tokens = first_reach(base.tokens, base.accuracy, target)
    base_flops = first_reach(base.flops, base.accuracy, target) if base.flops is not None else None
    table = {}
    for name, curve in curves.items():
        tokens = first_reach(curve.tokens, curve.accuracy, target) if len(curve.tokens) else None
        flops = (
            first_reach(curve.flops, curve.accuracy, target) if curve.flops is not None else None
        )
        table[name] = {
            "tokens": tokens,
            "flops": flops,
            "token_speedup": base_tokens / tokens if tokens and base_tokens else None,
            "flops_speedup": base_flops / flops if flops and base_flops else None,
        }
    return target, table
