"""A preempted training stage is never recorded as finished: signals sent to real processes (the
in-process stage, torchrun's ranks, the pipeline itself) leave the stage's checkpoint and no
marker, the pipeline exits 75, the rerun resumes the stage, and no rank outlives the pipeline."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from megatron_bliss import exit_codes
from megatron_bliss.cli import main
from megatron_bliss.engine.hooks import Hooks
from megatron_bliss.exit_codes import Interrupted
from megatron_bliss.pipeline.runner import PipelineHooks, run_pipeline
from megatron_bliss.utils.paths import REPO_ROOT
from tests.child_env import child_env
from tests.engine.test_preemption import train_steps, wait_for_steps
from tests.pipeline.test_runner import tiny_config


@pytest.fixture(scope="module")
def pipeline_inputs(tmp_path_factory, tiny_shard, tokenizer_dir, corpus_texts):
    from megatron_bliss.data.shards import split_indexed

    folder = tmp_path_factory.mktemp("preemption_inputs")
    target = folder / "target.jsonl"
    target.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus_texts[-8:]))
    shards = split_indexed(tiny_shard, 2, str(folder / "tiny"))
    return {"shards": shards, "tokenizer": str(tokenizer_dir), "target": str(target)}


def warmup_only(inputs, run_dir, **changes):
    values = {"method": "random", "num_rounds": 0, "eval": {"enabled": False}, **changes}
    return tiny_config(inputs, run_dir, **values)


def test_sigterm_in_an_inprocess_stage_leaves_it_unfinished(pipeline_inputs, tmp_path):
    config = warmup_only(pipeline_inputs, tmp_path / "run")

    def preempt_at_step_2(r, name):
        def on_step_end(step, metrics):
            if step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

        return Hooks(on_step_end=on_step_end)

    with pytest.raises(Interrupted, match="round 0 train: interrupted by a signal after step 2"):
        run_pipeline(config, PipelineHooks(train_hooks=preempt_at_step_2))
    round_dir = tmp_path / "run" / "round_0"
    assert not (round_dir / "stages" / "train.json").exists()
    assert (round_dir / "checkpoints" / "latest").read_text() == "global_step2"

    run_pipeline(config)  # the rerun resumes the stage at step 3
    assert train_steps(round_dir) == [1, 2, 3, 4]
    marker = json.loads((round_dir / "stages" / "train.json").read_text())
    assert marker["result"]["step"] == 4


def test_interrupted_command_exits_75_with_one_line(monkeypatch, capsys):
    import megatron_bliss.pipeline.cli as pipeline_cli

    def interrupted(args):
        raise Interrupted("round 0 train: interrupted by a signal after step 2")

    monkeypatch.setattr(pipeline_cli, "run", interrupted)
    assert main(["pipeline", "--config", "x.yaml"]) == exit_codes.INTERRUPTED
    assert capsys.readouterr().err.strip().splitlines() == [
        "megatron-bliss pipeline: round 0 train: interrupted by a signal after step 2"
    ]


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in pids), f"still running: {pids}"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_torchrun_stage_preempted_through_its_ranks_or_the_pipeline(pipeline_inputs, tmp_path):
    config = warmup_only(pipeline_inputs, tmp_path / "run", warmup_steps=300)
    values = dataclasses.asdict(config)
    values["pretrain"]["launcher"] = {"type": "torchrun", "nproc_per_node": 2}
    values["pretrain"]["logging"]["log_interval"] = 1
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(values))
    round_dir = tmp_path / "run" / "round_0"
    metrics = round_dir / "metrics.jsonl"

    def start() -> subprocess.Popen:
        command = [sys.executable, "-m", "megatron_bliss.cli", "pipeline", "--config",
                   str(config_path)]  # fmt: skip
        return subprocess.Popen(
            command, cwd=REPO_ROOT, env=child_env(), stderr=subprocess.PIPE, text=True
        )

    # SIGUSR1 reaches the ranks (as SLURM sends it): they checkpoint, the pipeline exits 75.
    pipeline = start()
    wait_for_steps(metrics, 2, pipeline)
    (torchrun,) = children(pipeline.pid)
    ranks = children(torchrun)
    assert len(ranks) == 2
    for rank in ranks:
        os.kill(rank, signal.SIGUSR1)
    _, err = pipeline.communicate(timeout=180)
    assert pipeline.returncode == exit_codes.INTERRUPTED, err[-3000:]
    assert "round 0 train: interrupted by a signal" in err.strip().splitlines()[-1]
    assert not (round_dir / "stages" / "train.json").exists()
    first_stop = json.loads((round_dir / "summary.json").read_text())["final_step"]
    assert (round_dir / "checkpoints" / "latest").read_text() == f"global_step{first_stop}"

    # The rerun resumes the stage; `kill PID` of the pipeline stops its ranks the same way.
    pipeline = start()
    wait_for_steps(metrics, first_stop + 1, pipeline)
    (torchrun,) = children(pipeline.pid)
    ranks = children(torchrun)
    pipeline.send_signal(signal.SIGTERM)
    _, err = pipeline.communicate(timeout=180)
    assert pipeline.returncode == exit_codes.INTERRUPTED, err[-3000:]
    wait_gone([torchrun, *ranks])
    steps = train_steps(round_dir)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > first_stop  # resumed
    assert not (round_dir / "stages" / "train.json").exists()


def test_a_child_dies_with_its_parent_even_on_sigkill(tmp_path):
    """``run_child``'s ranks end when the pipeline is killed with SIGKILL (no handler runs)."""
    pid_file = tmp_path / "child.pid"
    child = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    )
    parent = (
        "from megatron_bliss.utils.child_process import run_child; import sys; "
        f"run_child([sys.executable, '-c', {child!r}])"
    )
    process = subprocess.Popen([sys.executable, "-c", parent], cwd=REPO_ROOT)
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    child_pid = int(pid_file.read_text())
    assert alive(child_pid)
    process.kill()
    process.wait()
    wait_gone([child_pid], timeout=20)
