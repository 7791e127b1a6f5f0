"""Fixtures for the engine tests: a tiny pretrain config factory over the shared tiny shard."""

from __future__ import annotations

import os

import pytest

from megatron_bliss.utils.paths import REPO_ROOT

os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / ".cache" / "torch_extensions"))


def tiny_overrides(shard: str, tokenizer_dir, run_dir, **extra) -> list[str]:
    """Overrides for a fast pythia-tiny run (fp32 CPU, seq 32, 8 sequences per step)."""
    values = {
        "run_dir": str(run_dir),
        "data.prefix": shard,
        "data.tokenizer": str(tokenizer_dir),
        "data.seq_length": 32,
        "model.preset": "pythia-tiny",
        "train.global_batch_size": 8,
        "train.micro_batch_size": 2,
        "train.train_steps": 6,
        "train.precision": "fp32",
        "optimizer.lr": 3e-3,
        "schedule.warmup_steps": 1,
        "logging.progress_bar": False,
        "logging.tensorboard": False,
        "deepspeed.config": "ds_configs/cpu_zero3.json",
    }
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


@pytest.fixture
def make_config(tiny_shard, tokenizer_dir, tmp_path):
    from megatron_bliss.engine.config import load_pretrain_config

    def make(name: str = "run", **extra):
        overrides = tiny_overrides(tiny_shard, tokenizer_dir, tmp_path / name, **extra)
        return load_pretrain_config(None, overrides)

    return make


CHECKPOINTED_STEPS = {
    "train.train_steps": 4,
    "checkpoint.save_interval": 2,
    "checkpoint.keep_last": 3,
}


@pytest.fixture(scope="session")
def trained(tiny_shard, tokenizer_dir, tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 4 (ZeRO-3, one rank); tests that
    damage it work on a copy."""
    from megatron_bliss.engine.config import load_pretrain_config
    from megatron_bliss.engine.trainer import pretrain

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    overrides = tiny_overrides(tiny_shard, tokenizer_dir, run_dir, **CHECKPOINTED_STEPS)
    pretrain(load_pretrain_config(None, overrides))
    return run_dir
