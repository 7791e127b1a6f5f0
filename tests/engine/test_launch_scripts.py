"""Launch scripts are bash/python polyglots: each must parse as python, name a shipped config
whose ds_config exists, and stay executable (the tiny CPU script is run end to end by hand and
by ``make demo``; the forms are documented in the scripts' headers)."""

from __future__ import annotations

import ast
import os
import re

import pytest

from megatron_bliss.engine.config import load_pretrain_config
from megatron_bliss.engine.distributed import free_port
from megatron_bliss.utils.paths import REPO_ROOT, resolve_shipped
from tests.child_env import child_env

SCRIPTS = ["410m", "1b", "2p8b", "llama_0p5b", "tiny_cpu"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_launch_script_is_python_and_its_config_loads(name):
    script = REPO_ROOT / "launch_scripts" / f"pretrain_{name}.sh"
    text = script.read_text()
    ast.parse(text)  # what the deepspeed launcher / torchrun execute on every rank
    assert text.startswith('#!/usr/bin/env bash\n""":"\n') and os.access(script, os.X_OK)
    config_path = re.search(r'launch\("([^"]+)"', text).group(1)
    config = load_pretrain_config(config_path)  # the shipped config, from any directory
    assert resolve_shipped(config.deepspeed.config).exists()
    assert config.train.global_batch_size == (16 if name == "tiny_cpu" else 512)


@pytest.mark.slow
def test_tiny_cpu_script_trains_and_exports_with_two_ranks(tmp_path):
    """``bash launch_scripts/pretrain_tiny_cpu.sh`` as a user types it: torchrun, 2 CPU ranks
    (a rerun resuming from ``latest`` on 2 ranks: tests/engine/test_two_ranks.py)."""
    import json
    import subprocess

    env = child_env(
        RUN_DIR=str(tmp_path / "run"),
        MASTER_PORT=str(free_port()),
        EXTRA="train.train_steps=6 checkpoint.save_interval=2 "
        "data.seq_length=32 logging.eval_interval=0 logging.progress_bar=false",
    )
    script = REPO_ROOT / "launch_scripts" / "pretrain_tiny_cpu.sh"
    subprocess.run(["bash", str(script)], env=env, check=True, timeout=600)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "run" / "hf" / "model.safetensors").exists()
