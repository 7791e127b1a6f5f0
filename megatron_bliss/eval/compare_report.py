"""The report of ``megatron-bliss compare``: ``RUN_DIR/report.md`` with plots under ``plots/``.

Mean +- std over seeds of the held-out target-set loss, held-out C4 loss and 9-task average after
the last round, each method's difference to the baseline seed by seed, the tokens each method
needs to reach the baseline's final target-set loss, FLOPs by kind, the warm-up's held-out loss
beside a unigram model's, loss-vs-tokens curves, one sentence of outcome computed from the
numbers, and the highest- and lowest-scored sequences of each learned method.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from megatron_bliss.utils.io import atomic_write_text

logger = logging.getLogger(__name__)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _mean_std(stats: dict[str, Any] | None, digits: int = 4) -> str:
    if not stats or stats.get("mean") is None:
        return "n/a"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]


def differences(result: dict, method: str, key: str = "target_loss") -> list[float | None]:
    """Per seed: method's final ``key`` minus the baseline's (negative: the method is better)."""
    mine = result["summary"][method][key]["per_seed"]
    base = result["summary"].get(result["baseline"], {}).get(key, {}).get("per_seed") or []
    return [a - b if a is not None and b is not None else None for a, b in zip(mine, base)]


def _diff_cell(values: list[float | None]) -> str:
    clean = [v for v in values if v is not None]
    if not clean:
        return "n/a"
    std = float(np.std(clean, ddof=1)) if len(clean) > 1 else 0.0
    wins = sum(v < 0 for v in clean)
    return f"{np.mean(clean):+.4f} ± {std:.4f} (better in {wins}/{len(clean)})"


def _flops_cell(entry: dict) -> str:
    flops = entry["flops"]
    target = flops["target_training"]["mean"] or 0.0
    selection = (flops["selector_training"]["mean"] or 0.0) + (flops["scoring"]["mean"] or 0.0)
    share = f" ({100 * selection / target:.0f}% of target)" if target else ""
    return f"{target:.3g} / {selection:.3g}{share}"


def results_table(result: dict) -> list[str]:
    rows = []
    for method in result["methods"]:
        entry = result["summary"][method]
        reach = entry.get("tokens_to_baseline", {})
        reach_cell = "n/a"
        if reach and reach.get("mean") is not None:
            reached = sum(v is not None for v in reach["per_seed"])
            reach_cell = f"{100 * reach['mean']:.0f}% ± {100 * reach['std']:.0f} ({reached}/{len(reach['per_seed'])} reached)"
        rows.append([
            f"**{method}**" if method != result["baseline"] else method,
            _mean_std(entry["target_loss"]),
            "—" if method == result["baseline"] else _diff_cell(differences(result, method)),
            _mean_std(entry["c4_loss"]),
            _mean_std(entry["task_average"], 3),
            reach_cell,
            _flops_cell(entry),
        ])  # fmt: skip
    header = [
        "method", "held-out target-set loss", f"vs {result['baseline']} (per-seed difference)",
        "held-out C4 loss", "9-task average", f"tokens to reach {result['baseline']}'s final target loss",
        "FLOPs: target training / selection (training + scoring)",
    ]  # fmt: skip
    return _table(header, rows)


def outcome(result: dict) -> str:
    """One sentence from the numbers: which method has the lowest target-set loss, by how much
    against the baseline, and whether that gap exceeds twice the seed spread."""
    summary, baseline = result["summary"], result["baseline"]
    means = {m: summary[m]["target_loss"]["mean"] for m in result["methods"]}
    means = {m: v for m, v in means.items() if v is not None}
    if not means:
        return "No method finished a round."
    best = min(means, key=means.get)
    seeds = len(result["seeds"])
    if best == baseline or baseline not in means:
        return f"{best} has the lowest held-out target-set loss ({means[best]:.4f}) over {seeds} seed(s)."
    gaps = [v for v in differences(result, best) if v is not None]
    head = (
        f"{best} has the lowest held-out target-set loss ({means[best]:.4f}), "
        f"{-np.mean(gaps):.4f} below {baseline} on average over {seeds} seed(s) and below it in "
        f"{sum(g < 0 for g in gaps)} of {len(gaps)}"
    )
    if len(gaps) < 2:  # one seed has no spread: say so rather than compare with a zero std
        return head + "; one seed cannot show whether the gap exceeds seed-to-seed noise."
    spread = float(np.std(gaps, ddof=1))
    verdict = "more than twice" if -np.mean(gaps) > 2 * spread else "not more than twice"
    return head + f"; the gap is {verdict} its seed-to-seed std ({spread:.4f})."


def warmup_table(result: dict) -> list[str]:
    unigram = result.get("unigram", {})
    rows = [[f"seed {k} warm-up", _fmt(w.get("target_loss")), _fmt(w.get("c4_loss")),
             _fmt(w.get("tokens"), 0)] for k, w in result["warmup"].items()]  # fmt: skip
    rows.append(
        ["unigram model of the pool", _fmt(unigram.get("target")), _fmt(unigram.get("c4")), "—"]
    )
    return _table(["model", "held-out target-set loss", "held-out C4 loss", "tokens"], rows)


def per_seed_table(result: dict) -> list[str]:
    rows = []
    for method in result["methods"]:
        for k, record in result["runs"][method].items():
            for r in record["rounds"]:
                average = (r.get("task_average") or {}).get("mean")
                rows.append([method, k, r["round"], _fmt(r["tokens"], 0), _fmt(r["target_loss"]),
                             _fmt(r["c4_loss"]), _fmt(average, 3), f"{record.get('seconds', 'n/a')}"])  # fmt: skip
    header = [
        "method",
        "seed",
        "round",
        "tokens",
        "target loss",
        "C4 loss",
        "9-task avg",
        "seconds",
    ]
    return _table(header, rows)


def plot_curves(result: dict, path: Path) -> Path:
    """Held-out target-set and C4 loss vs tokens after the warm-up, mean over seeds (band: std)."""
    from megatron_bliss.eval.report_plots import _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for color, method in zip(plt.cm.tab10.colors, result["methods"]):
        for column, ax in zip((1, 2), axes):
            tokens, mean, std = _mean_curve(result["runs"][method], column)
            if len(tokens):
                ax.plot(tokens, mean, "o-", ms=3, color=color, label=method)
                ax.fill_between(tokens, mean - std, mean + std, color=color, alpha=0.15)
    for ax, name in zip(axes, ("target-set", "C4")):
        ax.set_xlabel("target training tokens after the warm-up")
        ax.set_ylabel(f"held-out {name} loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _mean_curve(by_seed: dict[str, Any], column: int):
    """Points that every seed has (same evaluation steps), averaged over seeds."""
    curves = [
        {p[0]: p[column] for p in seed["curve"] if p[column] is not None}
        for seed in by_seed.values()
    ]
    shared = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    values = np.array([[c[t] for t in shared] for c in curves]) if shared else np.zeros((0, 0))
    if not shared:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    return np.array(shared), values.mean(0), values.std(0)


def sequences_section(root: Path, result: dict, top_k: int = 5, max_chars: int = 160) -> list[str]:
    """The highest- and lowest-scored sequences of seed 0 for each method that learns a ranking."""
    from megatron_bliss.eval.report import PoolReader, _extremes_table, load_tokenizer
    from megatron_bliss.eval.run_data import load_run
    from megatron_bliss.selection.registry import ranks_by_content

    lines = ["## Highest- and lowest-scored sequences (seed 0)", ""]
    reader = PoolReader()
    for method in result["methods"]:
        run = load_run(root / "seed_0" / method)
        if not ranks_by_content(run.method):
            continue
        tokenizer = load_tokenizer(run)
        lines += [f"### {method}", ""]
        for r in run.rounds[1:]:
            lines += _extremes_table(run, r, reader, tokenizer, top_k, max_chars)
    return lines


def write_compare_report(root: str | Path) -> Path:
    root = Path(root)
    result = json.loads((root / "compare.json").read_text())
    plots = root / "plots"
    curves = plot_curves(result, plots / "compare_losses.png")
    target = result.get("target_set", {})
    lines = [
        f"# Selection comparison: {', '.join(result['methods'])}",
        "",
        f"Target set `{target.get('path')}` ({target.get('format')}); {len(result['seeds'])} "
        f"seed(s) {result['seeds']}; every method trains the target for the same steps from the "
        "same warm-up per seed. Losses are after the last round.",
        "",
        f"**Outcome.** {outcome(result)}",
        "",
        "## Results",
        "",
        *results_table(result),
        f"![held-out losses]({curves.relative_to(root)})",
        "",
        "## Warm-up (where selection starts) and a unigram model",
        "",
        *warmup_table(result),
        "## Per seed and round",
        "",
        *per_seed_table(result),
        *sequences_section(root, result),
    ]
    report = root / "report.md"
    atomic_write_text(report, "\n".join(lines))
    return report
