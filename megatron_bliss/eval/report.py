"""``megatron-bliss report RUN_DIR [RUN_DIR ...]``: a markdown report with PNG plots.

For pipeline run directories (docs/formats.md) of one or more selection methods it shows loss vs
tokens, zero-shot accuracy per round, the tokens/FLOPs each method needs to reach random
selection's accuracy, the score distribution per round with the highest- and lowest-scored
sequences, and a 13-gram contamination check. Plain ``pretrain`` run directories get the loss
and accuracy sections. Missing pieces are named in the report::

    megatron-bliss report runs/bliss runs/random --output runs
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from megatron_bliss.errors import ConfigError
from megatron_bliss.eval import contamination
from megatron_bliss.eval.curves import (
    accuracy_curve,
    common_tasks,
    loss_curve,
    round_accuracy,
    speedups,
)
from megatron_bliss.eval.report_plots import (
    plot_accuracy,
    plot_losses,
    plot_score_histograms,
    plot_speedup,
)
from megatron_bliss.eval.run_data import RoundData, RunData, load_run
from megatron_bliss.eval.task_specs import LOCAL_TASKS, headline_metric
from megatron_bliss.utils.dirs import check_dir_creatable
from megatron_bliss.utils.io import atomic_write_text

logger = logging.getLogger(__name__)
LAMBADA = "lambada_openai"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="pipeline run directories")
    parser.add_argument(
        "--output",
        default=None,
        help="folder for report.md and plots/ (default: the run directory, or the runs' common parent)",
    )
    parser.add_argument("--baseline", default="random", help="method the speedups are against")
    parser.add_argument("--top-k", type=int, default=5, help="highest/lowest sequences shown")
    parser.add_argument("--max-chars", type=int, default=160, help="characters shown per sequence")
    parser.add_argument(
        "--task-data",
        default=None,
        help="evaluation files for the contamination check when eval.json names none",
    )
    parser.add_argument(
        "--max-pool-sequences",
        type=int,
        default=20000,
        help="pool sequences decoded for the contamination check (evenly spaced sample)",
    )
    parser.add_argument("--max-documents", type=int, default=5000, help="documents per checked set")


def default_output_dir(run_dirs: list[Path]) -> Path:
    """The single run directory, else the runs' common parent."""
    if len(run_dirs) == 1:
        return run_dirs[0]
    return Path(os.path.commonpath([str(p.resolve()) for p in run_dirs]))


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer() and 1e3 <= abs(value) < 1e9:
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e5 else f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def _image(title: str, path: Path, output_dir: Path) -> str:
    return f"![{title}]({path.relative_to(output_dir).as_posix()})"


def _is_target_set(run: RunData, task: str) -> bool:
    target = (run.pipeline.get("target_set") or {}).get("task")
    return target == task or any(r.eval.get(task, {}).get("is_target_set") for r in run.rounds)


def runs_section(runs: list[RunData], output_dir: Path) -> list[str]:
    rows = []
    for run in runs:
        target = run.pipeline.get("target_set") or {}
        target_text = (
            f"{Path(target['path']).name} ({target.get('format', '?')})"
            if target.get("path")
            else "-"
        )
        location = os.path.relpath(run.path, output_dir)
        rows.append([run.name, run.method, len(run.rounds) - 1, target_text, f"`{location}`"])
    lines = ["## Runs", ""] + _table(
        ["run", "method", "selection rounds", "target set", "directory"], rows
    )
    notes = [f"- **{run.name}**: {note}" for run in runs for note in run.notes]
    if notes:
        lines += (
            ["Missing or unreadable pieces (the sections below leave them out):", ""] + notes + [""]
        )
    return lines


def loss_section(runs: list[RunData], plots: Path, output_dir: Path) -> list[str]:
    curves = {run.label: loss_curve(run) for run in runs}
    if not any(len(c.train_tokens) for c in curves.values()):
        return [
            "## Loss vs tokens",
            "",
            "No `metrics.jsonl` with `loss` and `consumed_tokens`.",
            "",
        ]
    path = plot_losses(curves, plots / "loss.png")
    lines = ["## Loss vs tokens", "", _image("loss vs tokens", path, output_dir), ""]
    rows = [
        [
            label,
            _cell(c.train_loss[-1] if len(c.train_loss) else None),
            _cell(c.val_loss[-1] if len(c.val_loss) else None),
            _cell(c.round_ends[-1], 4),
        ]
        for label, c in curves.items()
    ]
    return lines + _table(["run", "final train loss", "final held-out loss", "tokens"], rows)


def accuracy_section(
    runs: list[RunData], tasks: list[str], plots: Path, output_dir: Path
) -> list[str]:
    lines = ["## Zero-shot accuracy per round", ""]
    shown = tasks + (
        [LAMBADA] if any(LAMBADA in r.eval for run in runs for r in run.rounds) else []
    )
    if not shown:
        return lines + ["No `eval.json` with the paper's tasks in any round.", ""]
    path = plot_accuracy(runs, shown, plots / "accuracy.png")
    lines += [_image("accuracy per round", path, output_dir), ""]
    lines += [
        f"Metric: acc_norm where lm-eval reports it, else acc. Average = the {len(tasks)} of the "
        f"paper's 9 tasks evaluated in every run and round ({', '.join(tasks) or 'none'}); "
        "LAMBADA beside it, marked † where it was also the selection target set.",
        "",
    ]
    header = ["run", "round", "tokens"] + tasks + [f"average ({len(tasks)})", "lambada_openai"]
    rows = []
    for run in runs:
        mark = " †" if _is_target_set(run, LAMBADA) else ""
        for r in run.rounds:
            values = [r.eval.get(t, {}).get(headline_metric(t)) for t in tasks]
            lambada = r.eval.get(LAMBADA, {}).get("acc")
            lambada_text = f"{lambada:.4f}{mark}" if lambada is not None else "-"
            rows.append(
                [run.label, r.index, r.tokens, *values, round_accuracy(r, tasks), lambada_text]
            )
    return lines + _table(header, rows)


def speedup_section(
    runs: list[RunData], tasks: list[str], baseline: str, plots: Path, output_dir: Path
) -> list[str]:
    lines = ["## Tokens to target accuracy (speedup vs random)", ""]
    curves = {run.label: accuracy_curve(run, tasks) for run in runs}
    base = next((run.label for run in runs if run.method == baseline), None)
    if base is None or not tasks:
        why = f"no run with method `{baseline}`" if base is None else "no common evaluated tasks"
        return lines + [f"Not computed: {why}.", ""]
    target, table = speedups(curves, base)
    if target is None:
        return lines + [f"Not computed: the `{baseline}` run has no evaluated rounds.", ""]
    path = plot_speedup(curves, target, plots / "speedup.png")
    lines += [
        _image("accuracy vs tokens and FLOPs", path, output_dir),
        "",
        f"Target: {baseline}'s best average accuracy, {target:.4f}. Speedup = {baseline}'s tokens "
        "(or FLOPs, which include training the selector and scoring the pool) to reach it divided "
        "by the method's, interpolating linearly between rounds; '-' = not reached or not recorded.",
        "",
    ]
    rows = [
        [label, t["tokens"], t["token_speedup"], t["flops"], t["flops_speedup"]]
        for label, t in table.items()
    ]
    return lines + _table(
        ["run", "tokens to target", "token speedup", "FLOPs to target", "FLOPs speedup"], rows
    )


def load_tokenizer(run: RunData):
    """The run's tokenizer (``pipeline.json`` ``tokenizer``, any form ``--tokenizer`` accepts),
    or None with a note: a report without decoded sequences is still a report."""
    name = run.pipeline.get("tokenizer")
    if not name:
        run.notes.append("no `tokenizer` in pipeline.json: sequences are not decoded")
        return None
    from megatron_bliss.data.tokenizer import load_tokenizer as load

    try:
        return load(str(name))
    except (OSError, ValueError) as error:
        run.notes.append(f"tokenizer `{name}` could not be loaded ({error}); sequences not decoded")
        return None


class PoolReader:
    """Decoded text of pool sequences, cached across runs that read the same shard."""

    def __init__(self):
        self._pools: dict[tuple[str, int], Any] = {}
        self._texts: dict[tuple[str, int, int], str] = {}

    def pool(self, round_data: RoundData):
        from megatron_bliss.data.pool import SequencePool

        meta = round_data.selection_meta
        key = (str(meta["data_prefix"]), int(meta["seq_length"]))
        if key not in self._pools:
            self._pools[key] = SequencePool(*key)
        return self._pools[key]

    def texts(self, round_data: RoundData, tokenizer, indices: np.ndarray) -> list[str]:
        pool = self.pool(round_data)
        key = (pool.prefix, pool.seq_length)
        missing = np.array(
            [i for i in indices if (*key, int(i)) not in self._texts], dtype=np.int64
        )
        for index, text in zip(missing, contamination.pool_texts(pool, tokenizer, missing)):
            self._texts[(*key, int(index))] = text
        return [self._texts[(*key, int(i))] for i in indices]


def _snippet(text: str, max_chars: int) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= max_chars else flat[: max_chars - 1] + "…"


def scores_section(
    runs, plots: Path, output_dir: Path, reader: PoolReader, tokenizers, top_k: int, max_chars: int
) -> list[str]:
    lines = ["## Selection scores", ""]
    for run in runs:
        path = plot_score_histograms(run, plots / f"scores_{run.name}.png")
        if path is None:
            lines += [f"**{run.label}**: no `scores.npy` in any round.", ""]
            continue
        lines += [
            f"### {run.label}",
            "",
            _image(f"{run.label} score histograms", path, output_dir),
            "",
        ]
        for r in run.rounds:
            lines += _extremes_table(run, r, reader, tokenizers[run.name], top_k, max_chars)
    return lines


def _extremes_table(run, r: RoundData, reader, tokenizer, top_k: int, max_chars: int) -> list[str]:
    if r.scores is None or not len(r.scores):
        return []
    if tokenizer is None or not {"data_prefix", "seq_length"} <= set(r.selection_meta):
        return [
            f"Round {r.index}: sequences not shown (no tokenizer or no data_prefix/seq_length).",
            "",
        ]
    order = np.argsort(-np.asarray(r.scores, dtype=np.float64), kind="stable")
    picks = list(order[:top_k]) + list(order[::-1][:top_k])
    try:
        texts = reader.texts(r, tokenizer, np.array(picks, dtype=np.int64))
    except (FileNotFoundError, ValueError, IndexError) as error:
        return [f"Round {r.index}: sequences not shown ({error}).", ""]
    kept = set(r.selection.tolist()) if r.selection is not None else set()
    rows = [
        [
            "highest" if n < top_k else "lowest",
            int(i),
            float(r.scores[i]),
            "yes" if int(i) in kept else "no",
            _snippet(t, max_chars),
        ]
        for n, (i, t) in enumerate(zip(picks, texts))
    ]
    header = [f"round {r.index}", "sequence", "score", "kept", "text (decoded, truncated)"]
    return _table(header, rows)


def _document_sets(
    runs, task_data: Path | None, max_documents: int, notes: list[str]
) -> dict[str, list[str]]:
    """Target-set and evaluation documents to check, by name."""
    sets: dict[str, list[str]] = {}
    for run in runs:
        target = run.pipeline.get("target_set") or {}
        if target.get("path") and Path(target["path"]).is_file():
            sets.setdefault(
                f"target set ({Path(target['path']).name})",
                contamination.read_documents(target["path"], max_documents),
            )
        elif target.get("path"):
            notes.append(f"target set `{target['path']}` not found")
    files: dict[str, str] = {}
    for run in runs:
        for r in run.rounds:
            for task, entry in r.eval.items():
                if entry.get("data_file") and Path(entry["data_file"]).is_file():
                    files.setdefault(task, entry["data_file"])
                elif task_data is not None and task in LOCAL_TASKS:
                    candidate = Path(task_data) / LOCAL_TASKS[task].data_file
                    if candidate.is_file():
                        files.setdefault(task, str(candidate))
    for task, path in files.items():
        sets[f"eval: {task}"] = contamination.read_documents(path, max_documents)
    if not files:
        notes.append("no evaluation files found (eval.json without `data_file`; pass --task-data)")
    return sets


def contamination_section(
    runs, reader: PoolReader, tokenizers, task_data, max_pool_sequences: int, max_documents: int
) -> list[str]:
    lines = [
        "## Contamination check",
        "",
        f"Share of documents with at least one lower-cased whitespace-word {contamination.NGRAM}-gram "
        "that also occurs in the round's candidate pool or in its selection (hashed n-gram sets; "
        f"at most {max_pool_sequences} evenly spaced pool sequences and {max_documents} documents "
        f"per set; documents under {contamination.NGRAM} words count as clean).",
        "",
    ]
    notes: list[str] = []
    sets = _document_sets(runs, task_data, max_documents, notes)
    for run in runs:
        columns = _contamination_columns(
            run, reader, tokenizers[run.name], max_pool_sequences, notes
        )
        if not columns or not sets:
            continue
        header = ["documents", "n"] + [name for name, _ in columns]
        rows = [
            [name, len(docs)]
            + [_percent(contamination.contaminated_share(docs, index)) for _, index in columns]
            for name, docs in sets.items()
        ]
        lines += [f"### {run.label}", ""] + _table(header, rows)
    if len(lines) == 5:
        lines += [
            "Not computed: "
            + ("; ".join(notes) or "no selection rounds with a readable pool")
            + ".",
            "",
        ]
    elif notes:
        lines += ["Notes: " + "; ".join(notes) + ".", ""]
    return lines


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def _contamination_columns(run, reader, tokenizer, max_pool_sequences, notes):
    columns = []
    for r in run.rounds:
        if (
            r.index == 0
            or tokenizer is None
            or not {"data_prefix", "seq_length"} <= set(r.selection_meta)
        ):
            continue
        try:
            pool = reader.pool(r)
        except (FileNotFoundError, ValueError) as error:
            notes.append(f"{run.name} round {r.index}: pool unreadable ({error})")
            continue
        sample = contamination.evenly_spaced(
            np.arange(len(pool), dtype=np.int64), max_pool_sequences
        )
        columns.append(
            (f"round {r.index} pool", contamination.ngram_index(reader.texts(r, tokenizer, sample)))
        )
        if r.selection is not None:
            chosen = contamination.evenly_spaced(
                np.asarray(r.selection, dtype=np.int64), max_pool_sequences
            )
            columns.append(
                (
                    f"round {r.index} selection",
                    contamination.ngram_index(reader.texts(r, tokenizer, chosen)),
                )
            )
    return columns


def write_report(
    run_dirs: list[str | Path],
    output: str | Path | None = None,
    baseline: str = "random",
    top_k: int = 5,
    max_chars: int = 160,
    task_data: str | Path | None = None,
    max_pool_sequences: int = 20000,
    max_documents: int = 5000,
) -> Path:
    """Write ``report.md`` and ``plots/*.png`` for ``run_dirs``; return the report's path."""
    runs = [load_run(path) for path in run_dirs]
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"run directories must have distinct names, got {', '.join(names)}")
    output_dir = Path(output) if output else default_output_dir([run.path for run in runs])
    check_dir_creatable(output_dir / "plots", "--output folder")
    plots = output_dir / "plots"
    tasks = common_tasks(runs)
    steps = [
        lambda: loss_section(runs, plots, output_dir),
        lambda: accuracy_section(runs, tasks, plots, output_dir),
        lambda: speedup_section(runs, tasks, baseline, plots, output_dir),
    ]
    selecting = any(len(run.rounds) > 1 for run in runs)  # else: plain pretrain run directories
    if selecting:
        reader = PoolReader()
        tokenizers = {run.name: load_tokenizer(run) for run in runs}
        steps += [
            lambda: scores_section(runs, plots, output_dir, reader, tokenizers, top_k, max_chars),
            lambda: contamination_section(
                runs, reader, tokenizers, task_data, max_pool_sequences, max_documents
            ),
        ]
    body: list[str] = []
    for step in tqdm(steps, desc="report sections", disable=None):
        body += step()
    title = " vs ".join(run.label for run in runs)
    kind = "Data selection report" if selecting else "Training report"
    lines = [f"# {kind}: {title}", ""] + runs_section(runs, output_dir) + body
    report = output_dir / "report.md"
    atomic_write_text(report, "\n".join(lines))
    logger.info("wrote %s", report)
    return report


def run(args: argparse.Namespace) -> int:
    if len(args.runs) == 1 and (Path(args.runs[0]) / "compare.json").is_file():
        from megatron_bliss.eval.compare_report import write_compare_report

        print(write_compare_report(args.runs[0]))  # a `megatron-bliss compare` run directory
        return 0
    report = write_report(
        args.runs,
        output=args.output,
        baseline=args.baseline,
        top_k=args.top_k,
        max_chars=args.max_chars,
        task_data=args.task_data,
        max_pool_sequences=args.max_pool_sequences,
        max_documents=args.max_documents,
    )
    print(report)
    return 0
