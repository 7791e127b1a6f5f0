"""The summary of one ``benchmarks/gpu_suite.sh`` run: each step's status and its figures.

Reads ``gpu_suite_TAG_status.tsv`` and the JSON files it names; writes
``gpu_suite_TAG_summary.md`` (the tables for the README) and ``gpu_suite_TAG_summary.json``.
The selection cost of one paper-scale round is estimated from the measured rates: per GPU of the
paper's 8, ``outer_steps`` outer steps (measured at micro-batch 4, 16 score-model draws) plus
scoring the round's shard, over the round's target training at the measured pythia-1b ZeRO-2
tokens/s (the paper pipeline's ``ds_configs/pythia_1b.json``); the proxy's one-off warm-up is
left out.

    python benchmarks/gpu_suite_summary.py --results benchmarks/results --tag h100
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


def read_status(path: Path) -> dict[str, dict]:
    """Step -> its last status row (a rerun of some steps appends rows)."""
    if not path.exists():
        return {}
    with open(path, newline="") as handle:
        return {row["step"]: row for row in csv.DictReader(handle, delimiter="\t")}


def read_json(path: str | None) -> dict | None:
    if not path or path == "-" or not Path(path).exists():
        return None
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError:
        return None


def _number(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def throughput_rows(report: dict) -> list[dict]:
    """One row per variant of a train_throughput report."""
    stages = {name: v.get("zero_stage") for name, v in report.get("variants", {}).items()}
    rows = []
    for name, result in report.get("results", {}).items():
        rows.append(
            {
                "variant": name,
                "zero_stage": stages.get(name),
                "tokens_per_second": result.get("tokens_per_second_median"),
                "mfu": result.get("mfu"),
                "ratio_to_plain": report.get("ratio_median", {}).get(name),
                "ratio_to_zero2": report.get("ratio_to_zero2", {}).get(name),
                "peak_allocated_gb": result.get("peak_allocated_gb"),
            }
        )
    for name, error in report.get("errors", {}).items():
        rows.append({"variant": name, "error": error})
    return rows


def paper_round(selection: dict, zero2_tokens_per_second: float) -> dict:
    """Selection of one paper-scale round over its target training, per GPU of 8."""
    pipeline = yaml.safe_load((REPO_ROOT / "configs" / "pipeline_pythia_1b.yaml").read_text())
    gpus = pipeline["pretrain"]["launcher"]["nproc_per_node"]
    round_sequences = pipeline["round_steps"] * pipeline["pretrain"]["train"]["global_batch_size"]
    shard_sequences = round_sequences / pipeline["fraction"]
    outer_steps = pipeline["select"]["bliss"]["outer_steps"]
    training = round_sequences * pipeline["seq_length"] / (gpus * zero2_tokens_per_second)
    bilevel = outer_steps * selection["outer_step"]["outer_step_seconds"]
    scoring = shard_sequences / gpus / selection["scoring_sequences_per_second"]
    return {
        "gpus": gpus,
        "round_target_training_hours": round(training / 3600, 2),
        "bilevel_hours": round(bilevel / 3600, 2),
        "shard_scoring_hours": round(scoring / 3600, 2),
        "selection_over_training": round((bilevel + scoring) / training, 3),
        "inputs": {
            "outer_steps": outer_steps,
            "shard_sequences": shard_sequences,
            "round_tokens": round_sequences * pipeline["seq_length"],
            "outer_step_seconds": selection["outer_step"]["outer_step_seconds"],
            "scoring_sequences_per_second": selection["scoring_sequences_per_second"],
            "pythia_1b_zero2_tokens_per_second": zero2_tokens_per_second,
        },
    }


def summarize(results: Path, tag: str) -> tuple[str, dict]:
    status = read_status(results / f"gpu_suite_{tag}_status.tsv")
    lines = [
        f"# GPU suite ({tag})",
        "",
        "| step | status | seconds | output |",
        "|---|---|---|---|",
    ]
    for name, row in status.items():
        lines.append(
            f"| {name} | {row['status']} | {row['seconds']} | {Path(row['output']).name} |"
        )
    data = {"tag": tag, "steps": status, "throughput": {}, "max_micro_batch": {}}
    software = None
    for name, row in status.items():
        report = read_json(row["output"])
        if report is None:
            continue
        software = software or report.get("software")
        if "max_micro_batch" in report:
            data["max_micro_batch"][name] = {
                "preset": report["preset"],
                **report["max_micro_batch"],
            }
        elif "results" in report:
            data["throughput"][name] = {
                "preset": report["preset"], "compile": report.get("compile"),
                "liger": report.get("liger"), "rows": throughput_rows(report),
            }  # fmt: skip
        elif "outer_step" in report:
            data["selection"] = report
    if data["throughput"]:
        lines += ["", "| step | preset | variant | ZeRO | tokens/s | MFU | x plain | x ZeRO-2 | "
                  "peak GB |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, block in data["throughput"].items():
            for row in block["rows"]:
                if "error" in row:
                    lines.append(f"| {name} | {block['preset']} | {row['variant']} | "
                                 f"failed: {row['error'][:80]} ||||||")  # fmt: skip
                    continue
                mfu = "-" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
                lines.append(
                    f"| {name} | {block['preset']} | {row['variant']} | {row['zero_stage'] or '-'} "
                    f"| {_number(row['tokens_per_second'], 0)} | {mfu} "
                    f"| {_number(row['ratio_to_plain'], 2)} | {_number(row['ratio_to_zero2'], 2)} "
                    f"| {_number(row['peak_allocated_gb'])} |"
                )
    for name, block in data["max_micro_batch"].items():
        for variant, found in block.items():
            if variant == "preset":
                continue
            probes = ", ".join(
                f"{p['micro_batch']}{'' if p['fits'] else ' OOM'}"
                + (f" ({p['peak_allocated_gb']} GB)" if p.get("peak_allocated_gb") else "")
                for p in found["probes"]
            )
            lines.append(f"\n{name}: {block['preset']} {variant}: largest micro-batch "
                         f"{found['largest_fitting']} (tried {probes})")  # fmt: skip
    selection = data.get("selection")
    if selection:
        lines += ["", f"BLISS outer step ({selection['shapes']}): "
                  f"{selection['outer_step']['outer_step_seconds']} s, "
                  f"{selection['outer_step']['outer_over_plain']}x a plain proxy step; scoring "
                  f"{selection['scoring_sequences_per_second']} sequences/s "
                  f"({selection['scoring_precision']}) = {selection['scoring_speedup']}x the "
                  f"micro-batch-4 no_grad loop in float32"]  # fmt: skip
        if selection.get("scoring_speedup_vs_bf16_loop") is not None:
            lines[-1] += f", {selection['scoring_speedup_vs_bf16_loop']}x in bf16"
        if selection.get("peak_memory_gb"):
            lines[-1] += f"; peak GB by phase {selection['peak_memory_gb']}"
        zero2 = next(
            (row["tokens_per_second"] for row in
             data["throughput"].get("tt_1b", {}).get("rows", []) if row.get("variant") == "zero2"),
            None,
        )  # fmt: skip
        if zero2:
            data["paper_round"] = paper_round(selection, zero2)
            estimate = data["paper_round"]
            lines.append(
                f"Paper-scale round, per GPU of {estimate['gpus']}: selection "
                f"{estimate['bilevel_hours']} h bilevel + {estimate['shard_scoring_hours']} h "
                f"scoring vs {estimate['round_target_training_hours']} h target training = "
                f"{estimate['selection_over_training']} of the round (proxy warm-up excluded)"
            )
    if software:
        data["software"] = software
        lines += ["", "Software: " + ", ".join(f"{k} {v}" for k, v in software.items() if v)]
    return "\n".join(lines) + "\n", data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="benchmarks/results")
    parser.add_argument("--tag", required=True)
    args = parser.parse_args(argv)
    results = Path(args.results)
    markdown, data = summarize(results, args.tag)
    (results / f"gpu_suite_{args.tag}_summary.md").write_text(markdown)
    (results / f"gpu_suite_{args.tag}_summary.json").write_text(json.dumps(data, indent=2) + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
