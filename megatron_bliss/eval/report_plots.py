"""The report's PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from megatron_bliss.eval.curves import AccuracyCurve, LossCurve
from megatron_bliss.eval.run_data import RunData
from megatron_bliss.eval.task_specs import headline_metric


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, rect=(0, 0, 1, 1)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_losses(curves: dict[str, LossCurve], path: Path) -> Path:
    """Training (line) and held-out (markers) loss vs cumulative tokens, every run on one chart."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for color, (label, curve) in zip(plt.cm.tab10.colors, curves.items()):
        ax.plot(curve.train_tokens, curve.train_loss, color=color, lw=1.2, label=f"{label} train")
        if len(curve.val_tokens):
            ax.plot(
                curve.val_tokens,
                curve.val_loss,
                "o--",
                color=color,
                ms=4,
                label=f"{label} held-out",
            )
        for end in curve.round_ends[:-1]:
            ax.axvline(end, color=color, alpha=0.15, lw=0.8)
    ax.set_xlabel("target-model training tokens (cumulative; faint lines: round ends)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Training and held-out loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_accuracy(runs: list[RunData], tasks: list[str], path: Path) -> Path:
    """Per-task accuracy per round: one panel per task, runs side by side as grouped bars."""
    plt = _pyplot()
    columns = min(4, len(tasks))
    rows = int(np.ceil(len(tasks) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.8 * rows), squeeze=False)
    width = 0.8 / max(1, len(runs))
    for ax, task in zip(axes.flat, tasks):
        metric = headline_metric(task)
        for position, (color, run) in enumerate(zip(plt.cm.tab10.colors, runs)):
            rounds = [r.index for r in run.rounds if metric in r.eval.get(task, {})]
            values = [r.eval[task][metric] for r in run.rounds if metric in r.eval.get(task, {})]
            offsets = np.array(rounds) - 0.4 + width * (position + 0.5)
            ax.bar(offsets, values, width=width, color=color, label=run.label)
        ax.set_title(f"{task} ({metric})", fontsize=9)
        ax.set_xlabel("round", fontsize=8)
        ax.set_xticks(sorted({r.index for run in runs for r in run.rounds}))
        ax.grid(axis="y", alpha=0.3)
    spare = list(axes.flat)[len(tasks) :]
    for ax in spare:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if spare:  # the legend goes into an empty panel, where it hides no bar
        spare[0].legend(handles, labels, loc="center", fontsize=9, title="run")
        return _save(fig, path)
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    return _save(fig, path, rect=(0, 0.06, 1, 1))


def plot_score_histograms(run: RunData, path: Path) -> Path | None:
    """One histogram of selection scores per round, with the kept-score threshold marked."""
    scored = [r for r in run.rounds if r.scores is not None and len(r.scores)]
    if not scored:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(scored), figsize=(4 * len(scored), 3), squeeze=False)
    for ax, round_data in zip(axes.flat, scored):
        scores = np.asarray(round_data.scores, dtype=np.float64)
        ax.hist(scores, bins=min(60, max(10, len(scores) // 20)), color="tab:blue", alpha=0.8)
        threshold = round_data.threshold
        if threshold is not None:
            kept = len(round_data.selection) if round_data.selection is not None else 0
            ax.axvline(threshold, color="tab:red", ls="--", label=f"threshold (kept {kept})")
            ax.legend(fontsize=8)
        ax.set_title(f"{run.label}: round {round_data.index}", fontsize=9)
        ax.set_xlabel("score (higher = more useful)")
        ax.set_ylabel("sequences")
    return _save(fig, path)


def plot_speedup(curves: dict[str, AccuracyCurve], target: float | None, path: Path) -> Path:
    """Average accuracy vs tokens and vs FLOPs (selection included), with the target marked."""
    plt = _pyplot()
    fig, (by_tokens, by_flops) = plt.subplots(1, 2, figsize=(10, 4))
    for color, (label, curve) in zip(plt.cm.tab10.colors, curves.items()):
        by_tokens.plot(curve.tokens, curve.accuracy, "o-", color=color, label=label)
        if curve.flops is not None:
            by_flops.plot(curve.flops, curve.accuracy, "o-", color=color, label=label)
    for ax, xlabel in (
        (by_tokens, "target-model training tokens"),
        (by_flops, "FLOPs\n(target training + selection training + scoring)"),
    ):
        if target is not None:
            ax.axhline(target, color="grey", ls=":", label="target (random's best)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("average accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    by_tokens.set_title("Accuracy vs tokens")
    by_flops.set_title("Accuracy vs FLOPs")
    return _save(fig, path)
