"""Sequential vs overlapped selection: wall-clock of the tiny recipe launched as users launch it.

    .venv/bin/python benchmarks/overlap_wallclock.py [--nproc 3] [--group-size 1]
        [--round-steps 10] [--extra "train.global_batch_size=24"] [--output benchmarks/results/overlap_wallclock_cpu.json]

Runs ``SELECT=bliss bash launch_scripts/pretrain_tiny_cpu.sh`` (warm-up + 2 BLISS rounds) on
``--nproc`` CPU ranks twice, one after the other on the same data: sequentially (every rank
trains; the selector trains on ``group_size`` ranks and every rank scores) and with
``selection.overlap=true`` (the last ``group_size`` ranks select round r+1 from round r's
snapshot at half the round while the other ranks train round r). Reported per mode: the recipe's
wall-clock (from the recipe's first log line to ``pipeline finished``, so the shared data
preparation is left out), the total of the training part's waits for a selection, and the final
held-out loss (``val_loss`` at the last step: what the staler target costs, one seed, not an
efficacy figure).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from megatron_bliss.utils.io import atomic_write_json
from megatron_bliss.utils.paths import REPO_ROOT

SCRIPT = "launch_scripts/pretrain_tiny_cpu.sh"
STAMP = re.compile(r"^(\d\d:\d\d:\d\d) ")
WAITED = re.compile(r"waited ([\d.]+) s for round \d+'s selection")


def run_mode(run_dir: Path, nproc: int, extra: str, log: Path) -> dict:
    env = {
        **os.environ, "RUN_DIR": str(run_dir), "SELECT": "bliss", "NPROC_PER_NODE": str(nproc),
        "EXTRA": extra, "EXPORT": "0",
    }  # fmt: skip
    started = time.monotonic()
    with log.open("w") as out:
        completed = subprocess.run(["bash", SCRIPT], cwd=REPO_ROOT, env=env, stdout=out, stderr=out)
    total = time.monotonic() - started
    text = log.read_text()
    if completed.returncode != 0:
        raise SystemExit(f"{log}: the launch exited with {completed.returncode}")
    return {
        "launch_seconds": round(total, 1),
        "recipe_seconds": recipe_seconds(text),
        "waited_for_selection_seconds": round(sum(float(w) for w in WAITED.findall(text)), 1),
        "final_val_loss": final_val_loss(run_dir),
        "extra": extra,
    }


def recipe_seconds(log: str) -> float:
    """Seconds from the recipe's first line to ``pipeline finished`` (log timestamps)."""
    lines = log.splitlines()
    first = next(line for line in lines if "recipe: bliss" in line and STAMP.match(line))
    last = next(line for line in reversed(lines) if "pipeline finished" in line)
    start, end = (_clock(STAMP.match(line).group(1)) for line in (first, last))
    return float((end - start) % 86400)


def _clock(stamp: str) -> int:
    parsed = datetime.datetime.strptime(stamp, "%H:%M:%S")
    return parsed.hour * 3600 + parsed.minute * 60 + parsed.second


def final_val_loss(run_dir: Path) -> float | None:
    metrics = sorted(run_dir.glob("round_*/metrics.jsonl"))[-1]
    losses = [json.loads(line).get("val_loss") for line in metrics.read_text().splitlines()]
    losses = [loss for loss in losses if loss is not None]
    return losses[-1] if losses else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nproc", type=int, default=3)
    parser.add_argument("--group-size", type=int, default=1)
    parser.add_argument("--round-steps", type=int, default=10)
    parser.add_argument(
        "--extra", default="train.global_batch_size=24",
        help="overrides of both modes (the default batch divides by 3 ranks and by 2)",
    )  # fmt: skip
    parser.add_argument("--work-dir", default="runs/overlap_wallclock")
    parser.add_argument("--output", default="benchmarks/results/overlap_wallclock_cpu.json")
    args = parser.parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    common = f"{args.extra} selection.group_size={args.group_size}"
    common += f" selection.round_steps={args.round_steps}"
    modes = {"sequential": common, "overlap": f"{common} selection.overlap=true"}
    results = {}
    for name, extra in modes.items():
        run_dir = work / name
        if run_dir.exists():
            subprocess.run(["rm", "-rf", str(run_dir)], check=True)
        results[name] = run_mode(run_dir, args.nproc, extra, work / f"{name}.log")
        print(name, results[name], flush=True)
    sequential, overlap = (
        results["sequential"]["recipe_seconds"],
        results["overlap"]["recipe_seconds"],
    )
    record = {
        "command": "benchmarks/overlap_wallclock.py " + " ".join(argv or sys.argv[1:]),
        "nproc": args.nproc,
        "group_size": args.group_size,
        "round_steps": args.round_steps,
        "extra": args.extra,
        "cpu_count": os.cpu_count(),
        "modes": results,
        "overlap_speedup": round(sequential / overlap, 3) if overlap else None,
    }
    atomic_write_json(Path(args.output), record)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
