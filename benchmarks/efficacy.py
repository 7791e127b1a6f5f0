"""Does selection pay? BLISS against random and strong baselines, over seeds, in two settings.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/efficacy.py            # 3 seeds
    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/efficacy.py --seeds 1  # quick
    .venv/bin/python benchmarks/efficacy.py --settings target_directed --methods bliss,random,mates

Runs ``megatron-bliss compare`` with the two shipped configs (``configs/compare_*.yaml``: real
C4 pool; target set LAMBADA passages, or held-out C4 documents) and checks the issue's targets on
the resulting ``compare.json``:

* target-directed: BLISS's held-out target-set loss below random's in every seed, the mean gap
  larger than twice the std of the per-seed gaps, a mean at least as good as DSIR's and reducible
  loss's, and random's final target-set loss reached with at most 60% of random's tokens;
* in-distribution: BLISS's mean not above random's by more than random's seed std.

Each target is reported as met or missed, with the numbers; nothing is tuned here. Writes
``benchmarks/results/efficacy_SETTING.json`` (the compare summary, the checks, the wall time) and
prints a markdown table per setting. Run directories: ``runs/efficacy/SETTING`` (resumable).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np

from megatron_bliss.pipeline.compare import run_compare
from megatron_bliss.pipeline.config import load_pipeline_config
from megatron_bliss.utils.io import atomic_write_json
from megatron_bliss.utils.logging import setup_logging
from megatron_bliss.utils.paths import REPO_ROOT

logger = logging.getLogger("efficacy")
SETTINGS = {
    "target_directed": REPO_ROOT / "configs" / "compare_target_directed.yaml",
    "in_distribution": REPO_ROOT / "configs" / "compare_in_distribution.yaml",
}
RESULTS = REPO_ROOT / "benchmarks" / "results"


def _per_seed(result: dict, method: str) -> np.ndarray:
    values = result["summary"][method]["target_loss"]["per_seed"]
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _check(name: str, met: bool, detail: str) -> dict:
    return {"target": name, "met": bool(met), "detail": detail}


def target_directed_checks(result: dict, method: str = "bliss") -> list[dict]:
    checks = []
    if {method, "random"} <= set(result["summary"]):
        gaps = _per_seed(result, method) - _per_seed(result, "random")
        spread = float(np.std(gaps, ddof=1)) if len(gaps) > 1 else 0.0
        checks.append(_check(f"{method} below random in every seed", bool(np.all(gaps < 0)),
                             f"per-seed gaps {np.round(gaps, 4).tolist()}"))  # fmt: skip
        checks.append(_check("mean gap > 2 x seed std", -gaps.mean() > 2 * spread,
                             f"mean gap {-gaps.mean():.4f}, 2 x std {2 * spread:.4f}"))  # fmt: skip
        reach = result["summary"][method].get("tokens_to_baseline", {})
        fractions = [v for v in reach.get("per_seed", []) if v is not None]
        met = len(fractions) == len(gaps) and max(fractions, default=1.0) <= 0.6
        checks.append(_check("random's final loss with <= 60% of its tokens", met,
                             f"fractions {np.round(fractions, 3).tolist()} (None: never)"))  # fmt: skip
    mean = result["summary"].get(method, {}).get("target_loss", {}).get("mean")
    for baseline in ("dsir", "reducible"):
        other = result["summary"].get(baseline, {}).get("target_loss", {}).get("mean")
        if mean is not None and other is not None:
            checks.append(_check(f"{method} mean <= {baseline} mean", mean <= other,
                                 f"{mean:.4f} vs {other:.4f}"))  # fmt: skip
    return checks


def in_distribution_checks(result: dict, method: str = "bliss") -> list[dict]:
    if not {method, "random"} <= set(result["summary"]):
        return []
    mine = result["summary"][method]["target_loss"]
    random = result["summary"]["random"]["target_loss"]
    bound = random["mean"] + random["std"]
    return [_check(f"{method} not worse than random beyond one seed std", mine["mean"] <= bound,
                   f"{mine['mean']:.4f} vs random {random['mean']:.4f} + std {random['std']:.4f}")]  # fmt: skip


CHECKS = {"target_directed": target_directed_checks, "in_distribution": in_distribution_checks}


def markdown(setting: str, result: dict, checks: list[dict], seconds: float) -> str:
    from megatron_bliss.eval.compare_report import outcome, results_table, warmup_table

    lines = [
        f"### {setting.replace('_', '-')} ({len(result['seeds'])} seeds, {seconds / 60:.1f} min)",
        "",
    ]
    lines += results_table(result) + warmup_table(result)
    lines += [f"Outcome: {outcome(result)}", ""]
    lines += [f"- {'met' if c['met'] else 'MISSED'}: {c['target']} ({c['detail']})" for c in checks]
    return "\n".join(lines) + "\n"


def run_setting(setting: str, args) -> str:
    overrides = [f"compare.seeds={args.seeds}"]
    if args.methods:
        overrides.append(f"compare.methods=[{args.methods}]")
    config = load_pipeline_config(SETTINGS[setting], overrides + list(args.overrides))
    start = time.perf_counter()
    result = run_compare(config, Path(args.run_dir) / setting)
    seconds = time.perf_counter() - start
    checks = CHECKS[setting](result)
    payload = {"setting": setting, "config": str(SETTINGS[setting].relative_to(REPO_ROOT)),
               "seconds": round(seconds, 1), "checks": checks, "compare": result}  # fmt: skip
    if args.output:
        atomic_write_json(Path(args.output) / f"efficacy_{setting}.json", payload)
    return markdown(setting, result, checks, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--methods", default=None, help="default: the configs' (bliss, random, dsir, reducible)"
    )
    parser.add_argument("--run-dir", default=str(REPO_ROOT / "runs" / "efficacy"))
    parser.add_argument(
        "--output", default=str(RESULTS), help="folder for efficacy_*.json ('' : none)"
    )
    parser.add_argument("overrides", nargs="*", help="pipeline key=value overrides")
    args = parser.parse_args()
    setup_logging()
    os.chdir(REPO_ROOT)  # the configs' paths are relative to the repository root
    for setting in args.settings.split(","):
        if setting not in SETTINGS:
            parser.error(f"unknown setting '{setting}' (known: {', '.join(SETTINGS)})")
        print(run_setting(setting, args))


if __name__ == "__main__":
    main()
