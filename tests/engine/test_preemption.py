"""A signal sent to a real ``pretrain`` process: it checkpoints, exits 75 (not 0), and rerunning
continues from that checkpoint, also after ``latest`` was lost, without overwriting anything."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from megatron_bliss import exit_codes
from megatron_bliss.engine.trainer import pretrain
from megatron_bliss.utils.paths import REPO_ROOT
from tests.child_env import child_env
from tests.engine.conftest import tiny_overrides


def wait_for_steps(metrics, steps: int, process, timeout: float = 240.0) -> None:
    """Until ``metrics`` (a metrics.jsonl) records ``steps`` training steps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        if metrics.exists():
            records = [json.loads(line) for line in metrics.read_text().splitlines() if line]
            if sum("loss" in record for record in records) >= steps:
                return
        time.sleep(0.2)
    raise AssertionError(f"{metrics}: fewer than {steps} steps after {timeout} s")


def train_steps(run_dir) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [record["step"] for record in map(json.loads, lines) if "loss" in record]


def test_sigterm_exits_75_and_a_rerun_resumes_without_latest(
    tiny_shard, tokenizer_dir, tmp_path, make_config
):
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(tiny_shard, tokenizer_dir, run_dir, **{"train.train_steps": 400})
    command = [sys.executable, "-m", "megatron_bliss.cli", "pretrain", *overrides]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    wait_for_steps(run_dir / "metrics.jsonl", 3, process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == exit_codes.INTERRUPTED, err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    stopped = summary["final_step"]
    assert summary["interrupted"] and summary["signal"] == signal.SIGTERM and stopped >= 3
    assert f"interrupted by signal 15 after step {stopped}" in err.strip().splitlines()[-1]
    assert "pretrain: step" not in out  # not the line of a finished run
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "latest").read_text() == f"global_step{stopped}"
    record = json.loads((checkpoints / f"global_step{stopped}" / "complete.json").read_text())
    assert "meta.json" in record["files"] and record["step"] == stopped

    # `latest` lost (a copy, a cleanup): the rerun resumes from the newest complete folder.
    (checkpoints / "latest").unlink()
    resumed = pretrain(make_config("run", **{"train.train_steps": stopped + 2}))
    assert not resumed["interrupted"] and resumed["final_step"] == stopped + 2
    assert len(resumed["losses"]) == 2  # two new steps, nothing trained again
    assert train_steps(run_dir) == list(range(1, stopped + 3))  # earlier records kept
