"""Which BLISS variant selects best? Each candidate through the efficacy benchmark's pipeline.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bliss_study.py \\
        --rounds 1 --seeds 1                       # screening: round 1 of one seed
    .venv/bin/python benchmarks/bliss_study.py --variants bliss,paper,identity --seeds 3

Every variant is a named ``compare.variants`` entry over the shipped target-directed config
(``configs/compare_target_directed.yaml``), so all of them start from the same warm-up per seed
and train the target for the same steps on what they select; random, DSIR and reducible loss run
beside them. Writes ``benchmarks/results/bliss_study.json`` and a markdown table (held-out
target-set loss, its difference to random, the score model's Spearman correlation with the
direct alignment it learns, with loss and with gradient norm, selection seconds and FLOPs).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from megatron_bliss.pipeline.compare import run_compare
from megatron_bliss.pipeline.config import load_pipeline_config
from megatron_bliss.utils.io import atomic_write_json
from megatron_bliss.utils.logging import setup_logging
from megatron_bliss.utils.paths import REPO_ROOT

CONFIG = REPO_ROOT / "configs" / "compare_target_directed.yaml"
BASELINES = ("random", "dsir", "reducible")

# name: (what it changes, the bliss settings over the config's)
VARIANTS: dict[str, tuple[str, dict]] = {
    "bliss": ("the shipped default (unrolled z, gibbs weights, temperature 2, likelihood ratio)",
              {}),
    "paper": ("the authors' algorithm (variant: paper)", {"variant": "paper"}),
    "before_gibbs": ("the default before gibbs weights (adam z, sigmoid weights, regression)",
                     {"solver": "adam", "weights": "paper", "score_head": "regression"}),
    "sigmoid": ("the authors' sigmoid weights, no KL on the upper level", {"weights": "paper"}),
    "regression": ("score_head regression (pooled linear head, the authors')",
                   {"score_head": "regression"}),
    "t1": ("gibbs temperature 1", {"temperature": 1.0}),
    "t4": ("gibbs temperature 4", {"temperature": 4.0}),
    "adam": ("z = Adam moments of grad f across outer steps", {"solver": "adam"}),
    "identity": ("z = grad f (no Adam moments)", {"solver": "identity"}),
    "cg": ("z by 3 CG steps on (H + lamb I) z = grad f", {"solver": "cg", "cg_iters": 3}),
    "raw": ("raw c_i, not standardized", {"normalize": "none"}),
    "steps200": ("200 outer steps (2x the draws)", {"outer_steps": 200}),
    "draws128": ("128 draws per outer step", {"upper_batch_size": 128}),
    "draws16": ("16 draws per outer step (the batch)", {"upper_batch_size": None}),
    "lr3e-4": ("score-model lr 3e-4", {"lr_score": 3.0e-4}),
    "lr3e-3": ("score-model lr 3e-3", {"lr_score": 3.0e-3}),
    "inner5": ("5 inner steps per outer step", {"inner_steps": 5}),
    "gamma0": ("no KL pull toward the target", {"gamma": 0.0}),
    "target64": ("64 target-set examples per grad f", {"target_batch_size": 64}),
    "proxywarm": ("a proxy warmed up on the pool, not the target's copy",
                  {"proxy_init": None, "proxy_preset": "pythia-tiny-128",
                   "proxy_warmup_steps": 300, "proxy_warmup_lr": 3.0e-3}),
    "unrolled_r20": ("z remade from the moving proxy every 20 outer steps",
                     {"unroll_refresh": 20}),
    "direct": ("the pool ranked by g_i . z itself (adam z), no score model",
               {"solver": "adam", "ranking": "alignment"}),
    "unrolled_direct": ("the pool ranked by g_i . z itself (unrolled z), no score model",
                        {"ranking": "alignment"}),
}  # fmt: skip


def variant_name(name: str) -> str:
    return name if name == "bliss" else f"bliss_{name}"


def study_rows(result: dict, root: Path, names: list[str]) -> list[dict]:
    rows = []
    random = result["summary"].get("random", {}).get("target_loss", {})
    for method in result["methods"]:
        entry = result["summary"][method]
        row = {"method": method, "target_loss": entry["target_loss"], "c4_loss": entry["c4_loss"]}
        if random.get("mean") is not None and entry["target_loss"]["mean"] is not None:
            row["vs_random"] = entry["target_loss"]["mean"] - random["mean"]
        row["selection"] = selection_facts(root, method, len(result["seeds"]))
        name = next((n for n in names if variant_name(n) == method), None)
        row["changes"] = VARIANTS[name][0] if name else "baseline"
        rows.append(row)
    return rows


def selection_facts(root: Path, method: str, seeds: int) -> dict:
    """Mean over seeds and rounds of selection seconds, FLOPs and BLISS's diagnostics."""
    seconds, flops, diagnostics = [], [], {}
    for k in range(seeds):
        for meta_path in sorted((root / f"seed_{k}" / method).glob("round_*/selection.json")):
            meta = json.loads(meta_path.read_text())
            seconds.append(meta.get("seconds", 0.0))
            flops.append(meta.get("flops", 0.0))
            for key, value in (meta.get("diagnostics") or {}).items():
                diagnostics.setdefault(key, []).append(value)
    mean = lambda values: sum(values) / len(values) if values else None  # noqa: E731
    return {"seconds": mean(seconds), "flops": mean(flops),
            **{key: mean(values) for key, values in diagnostics.items()}}  # fmt: skip


def markdown(rows: list[dict], seeds: int, rounds: int) -> str:
    lines = [f"BLISS study: target-directed setting, {seeds} seed(s), {rounds} round(s).", "",
             "| variant | changes | target loss | vs random | C4 loss | Spearman: alignment / loss / grad norm | selection s / round | selection FLOPs / round |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    fmt = lambda v, d=4: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    for row in rows:
        s = row["selection"]
        spearman = "/".join(fmt(s.get(k), 2) for k in ("spearman_alignment", "spearman_loss",
                                                        "spearman_gradient_norm"))  # fmt: skip
        target = row["target_loss"]
        lines.append(
            f"| {row['method']} | {row['changes']} | {fmt(target['mean'])} ± {fmt(target['std'])} "
            f"| {fmt(row.get('vs_random'), 4)} | {fmt(row['c4_loss']['mean'])} | "
            f"{spearman if s.get('spearman_alignment') is not None else '—'} | {fmt(s['seconds'], 0)} "
            f"| {fmt(s['flops'], 3) if s['flops'] is None else format(s['flops'], '.3g')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--run-dir", default=str(REPO_ROOT / "runs" / "bliss_study"))
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    setup_logging()
    os.chdir(REPO_ROOT)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown} (known: {', '.join(VARIANTS)})")
    variants = {variant_name(n): {"method": "bliss", "select": {"bliss": VARIANTS[n][1]}}
                for n in names if n != "bliss"}  # fmt: skip
    methods = [*BASELINES, *(variant_name(n) for n in names)]
    overrides = [f"num_rounds={args.rounds}", f"compare.seeds={args.seeds}",
                 f"compare.methods=[{','.join(methods)}]", "eval.enabled=false"]  # fmt: skip
    config = load_pipeline_config(CONFIG, overrides)
    config.compare.variants = variants
    root = Path(args.run_dir) / f"rounds{args.rounds}"
    start = time.perf_counter()
    result = run_compare(config, root)
    rows = study_rows(result, root, names)
    table = markdown(rows, args.seeds, args.rounds)
    payload = {"seeds": result["seeds"], "rounds": args.rounds, "rows": rows,
               "seconds": round(time.perf_counter() - start, 1), "config": str(CONFIG.relative_to(REPO_ROOT))}  # fmt: skip
    if args.output:
        atomic_write_json(Path(args.output) / f"bliss_study_rounds{args.rounds}.json", payload)
        (Path(args.output) / f"bliss_study_rounds{args.rounds}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
