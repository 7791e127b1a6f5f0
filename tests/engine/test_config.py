"""Config validation (one clear line per mistake), LR schedules, and batch construction."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from megatron_bliss.config import ConfigError
from megatron_bliss.engine.batches import BatchOptions, make_batch, micro_batch_indices
from megatron_bliss.engine.checkpoint import check_compatible
from megatron_bliss.engine.config import (
    PretrainConfig,
    ScheduleConfig,
    gradient_accumulation,
    load_pretrain_config,
    resolve_precision,
)
from megatron_bliss.engine.schedules import learning_rate

BASE = ["data.prefix=shard"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.bogus=1"], "unknown key 'bogus'"),
        (["train.global_batch_size=10", "train.micro_batch_size=4"], "does not divide"),
        (["data.seq_length=4096", "model.preset=pythia-tiny"], "longer than the model's context"),
        (["train.precision=fp8"], "train.precision"),
        (["model.preset=gpt-9"], "unknown"),
        ([], "no training data"),
        (["optimizer.min_lr=-1"], r"optimizer\.min_lr=-1\.0 must be in \[0, optimizer\.lr"),
        (["optimizer.lr=-0.001"], r"optimizer\.lr=-0\.001 must be > 0"),
        (["optimizer.lr=0.001", "optimizer.min_lr=0.01"], r"optimizer\.min_lr=0\.01"),
        (["optimizer.eps=0"], r"optimizer\.eps=0\.0 must be > 0"),
        (["schedule.lr_multiplier=-0.5"], r"schedule\.lr_multiplier=-0\.5 must be > 0"),
    ],
)
def test_config_errors_are_one_line(overrides, message):
    base = [] if message == "no training data" else BASE
    with pytest.raises(ConfigError, match=message) as error:
        load_pretrain_config(None, base + overrides)
    assert "\n" not in str(error.value)


def test_yaml_file_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  micro_batch_size: 3\n  global_batch_size: 8\ndata:\n  prefix: s\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_pretrain_config(path)


def test_world_dependent_checks():
    config = load_pretrain_config(
        None, [*BASE, "train.global_batch_size=8", "train.micro_batch_size=2"]
    )
    assert gradient_accumulation(config, 2) == 2
    with pytest.raises(ConfigError, match="not divisible"):
        gradient_accumulation(config, 3)
    config.train.precision = "fp16"
    with pytest.raises(ConfigError, match="fp16 is not supported on CPU"):
        resolve_precision(config, "cpu")
    assert resolve_precision(PretrainConfig(), "cpu") == "fp32"
    with pytest.raises(ConfigError, match="written by 4 ranks, this run has 2"):
        check_compatible({"world_size": 4, "zero_stage": 3}, 2, 3, "ckpt")
    with pytest.raises(ConfigError, match="ZeRO stage 2"):
        check_compatible({"world_size": 2, "zero_stage": 2}, 2, 3, "ckpt")


def test_cosine_schedule():
    schedule = ScheduleConfig(type="cosine", warmup_steps=10)
    lrs = [learning_rate(s, schedule, 1e-3, 1e-4, 110) for s in range(110)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[60] == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert lrs[-1] == pytest.approx(1e-4, rel=1e-2)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))


def test_constant_schedule_with_round_multiplier_and_decay():
    schedule = ScheduleConfig(type="constant", warmup_steps=2, lr_multiplier=0.25, decay_steps=4)
    lrs = [learning_rate(s, schedule, 1e-3, 0.0, 10) for s in range(10)]
    assert lrs[:2] == pytest.approx([1.25e-4, 2.5e-4])
    assert lrs[2:6] == pytest.approx([2.5e-4] * 4)  # BLISS round 2: 1e-3 * 0.5**2
    assert lrs[6:] == pytest.approx([1.875e-4, 1.25e-4, 0.625e-4, 0.0])
    halving = ScheduleConfig(
        type="constant", warmup_steps=0, decay_steps=100, decay_style="halving", halving_steps=50
    )
    assert learning_rate(99, halving, 1e-3, 0.0, 150) == pytest.approx(0.5e-3)
    assert learning_rate(149, halving, 1e-3, 0.0, 150) == pytest.approx(0.25e-3)


def test_micro_batches_cover_each_step_once_for_any_world():
    for world, accumulation in ((1, 4), (2, 2), (4, 1)):
        seen = sorted(
            index
            for rank in range(world)
            for micro in range(accumulation)
            for index in micro_batch_indices(16, micro, rank, world, 2)
        )
        assert seen == list(range(16, 24))


def test_megatron_eod_options_separate_documents():
    """eod_mask_loss, reset_position_ids and the 4-D reset_attention_mask make the second
    document's logits equal to feeding it alone."""
    from megatron_bliss.models.presets import build_model

    torch.manual_seed(0)
    model = build_model("pythia-tiny", vocab_size=64, attn_implementation="sdpa").eval()
    eod = 0
    sample = np.array([[5, 6, 7, eod, 9, 10, 11, 12, 13]])
    options = BatchOptions(eod, True, True, True)
    batch = make_batch(sample, options, torch.device("cpu"), torch.float32)
    assert batch["loss_mask"].tolist() == [[1, 1, 1, 0, 1, 1, 1, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]
    assert batch["attention_mask"].shape == (1, 1, 8, 8)
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            attention_mask=batch["attention_mask"],
        ).logits
        alone = model(input_ids=torch.tensor([[9, 10, 11, 12]])).logits
    torch.testing.assert_close(packed[0, 4:], alone[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="eod_token_id"):
        make_batch(sample, BatchOptions(None, True), torch.device("cpu"), torch.float32)


def test_run_dir_through_a_file_is_refused_at_load(tmp_path):
    from megatron_bliss.config import ConfigError
    from megatron_bliss.engine.config import load_pretrain_config

    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"run_dir is under the file"):
        load_pretrain_config(None, [f"run_dir={tmp_path / 'file' / 'run'}", "data.prefix=x"])
