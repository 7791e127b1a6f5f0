"""Single-process engine runs: hard-kill resume equality, the run directory's files, export round
trip through the CLI, init_from, stop paths, logging without host syncs, activation checkpointing
and the dry run."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_bliss.engine.hooks import Hooks
from megatron_bliss.engine.trainer import pretrain
from tests.engine.conftest import tiny_overrides

KILL_RUN = {
    "train.train_steps": 6,
    "checkpoint.save_interval": 2,
    "checkpoint.keep_last": 2,
    "logging.eval_interval": 3,
}


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def kill_runs(tmp_path_factory, tiny_shard, tokenizer_dir):
    """An uninterrupted 6-step run, and the same run hard-killed after step 3 (no checkpoint of
    step 3: the hook stops it without one) and then rerun to its end."""
    from megatron_bliss.engine.config import load_pretrain_config

    root = tmp_path_factory.mktemp("kill_runs")

    def config(name, **extra):
        values = {**KILL_RUN, "data.valid_prefix": tiny_shard, **extra}
        return load_pretrain_config(
            None, tiny_overrides(tiny_shard, tokenizer_dir, root / name, **values)
        )

    full = pretrain(config("full", **{"logging.tensorboard": True}))
    killed = pretrain(config("killed"), Hooks(stop_after_step=3))
    seen = []
    resumed = pretrain(config("killed"), Hooks(on_step_end=lambda step, m: seen.append(step)))
    return {"root": root, "full": full, "killed": killed, "resumed": resumed, "seen": seen}


def test_a_hard_killed_run_resumes_with_the_losses_of_an_uninterrupted_one(kill_runs):
    full, killed, resumed = kill_runs["full"], kill_runs["killed"], kill_runs["resumed"]
    assert full["final_step"] == 6 and len(full["losses"]) == 6
    assert full["consumed_tokens"] == 6 * 8 * 32
    assert full["flops"] == pytest.approx(full["flops_per_token"] * full["consumed_tokens"])
    assert killed["interrupted"] and killed["stopped_by"] == "hook" and killed["final_step"] == 3
    assert kill_runs["seen"] == [3, 4, 5, 6]  # replays step 3 from step 2's checkpoint
    np.testing.assert_allclose(resumed["losses"], full["losses"][2:], rtol=1e-6)
    records = read_metrics(kill_runs["root"] / "killed")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]  # step 3 once


def test_the_run_directory_holds_metrics_checkpoints_and_config(kill_runs):
    run_dir = kill_runs["root"] / "killed"
    records = read_metrics(run_dir)
    val = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in val] == [3, 6] and all(np.isfinite(r["val_loss"]) for r in val)
    for key in ("lr", "grad_norm", "tokens_per_second", "mfu", "consumed_samples"):
        assert key in records[0]
    steps_kept = sorted(p.name for p in (run_dir / "checkpoints").glob("global_step*"))
    assert steps_kept == ["global_step4", "global_step6"]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "global_step6"
    assert (run_dir / "config.yaml").exists() and (run_dir / "tokenizer").is_dir()
    assert any((kill_runs["root"] / "full" / "tensorboard").iterdir())


def test_export_hf_gives_the_checkpoints_logits_and_tokenizer(kill_runs, tmp_path):
    from transformers import AutoTokenizer

    from megatron_bliss.cli import main
    from megatron_bliss.engine.export import load_model

    checkpoints = kill_runs["root"] / "killed" / "checkpoints"
    output = tmp_path / "hf"
    assert main(["export-hf", "--checkpoint", str(checkpoints), "--output", str(output)]) == 0
    assert AutoTokenizer.from_pretrained(output).eos_token == "<|endoftext|>"
    config = json.loads((output / "config.json").read_text())
    assert config["vocab_size"] == 512 and config["hidden_size"] == 64
    probe = torch.arange(40).reshape(2, 20)
    with torch.no_grad():
        from_dir = load_model(output)(input_ids=probe).logits
        from_checkpoint = load_model(checkpoints / "global_step6")(input_ids=probe).logits
    torch.testing.assert_close(from_dir, from_checkpoint, rtol=0, atol=0)


def test_init_from_an_export_starts_where_the_trained_run_ended(kill_runs, make_config, tmp_path):
    from megatron_bliss.engine.export import export_hf

    output = export_hf(kill_runs["root"] / "full" / "checkpoints", tmp_path / "hf")
    warm = pretrain(make_config("warm", **{"model.init_from": str(output), "train.train_steps": 1}))
    assert warm["losses"][0] < kill_runs["full"]["losses"][0] - 0.1


def test_a_hook_stop_with_a_checkpoint_ends_like_a_signal_stop(make_config, tmp_path):
    ended = []
    hooks = Hooks(stop_after_step=2, stop_with_checkpoint=True, on_train_end=ended.append)
    summary = pretrain(make_config("stopped"), hooks)
    assert summary["interrupted"] and summary["signal"] is None and summary["final_step"] == 2
    assert json.loads((tmp_path / "stopped" / "summary.json").read_text())["interrupted"]
    assert (tmp_path / "stopped" / "checkpoints" / "latest").read_text().strip() == "global_step2"
    assert ended == [summary]


def test_steps_that_do_not_log_leave_the_loss_on_the_device(make_config, monkeypatch):
    """Only logged steps read values back from the device: the engine's ``.item()`` and
    ``.tolist()`` calls happen on steps 4 and 6 (log_interval 4, and the last step), never on
    steps 1-3 and 5 (DeepSpeed's own calls are not the engine's to remove)."""
    import sys
    from pathlib import Path

    import megatron_bliss

    package = str(Path(megatron_bliss.__file__).parent)
    reads, step = [], {"now": 0}
    for name in ("item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(tensor, _original=original):
            if sys._getframe(1).f_code.co_filename.startswith(package):
                reads.append(step["now"])
            return _original(tensor)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def before(number, metrics):
        step["now"] = number + 1

    config = make_config("sparse_reads", **{"train.train_steps": 6, "logging.log_interval": 4})
    summary = pretrain(config, Hooks(on_step_end=before))
    assert len(summary["losses"]) == 6 and all(np.isfinite(summary["losses"]))
    monkeypatch.undo()
    training_reads = {s for s in reads if 1 <= s <= 6}
    assert training_reads == {4, 6}, sorted(set(reads))


def test_sigterm_checkpoints_and_stops(make_config, tmp_path):
    def preempt(step, metrics):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    summary = pretrain(make_config("preempted"), Hooks(on_step_end=preempt))
    assert summary["interrupted"] and summary["final_step"] == 2
    latest = tmp_path / "preempted" / "checkpoints" / "latest"
    assert latest.read_text().strip() == "global_step2"
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored


def test_gradient_checkpointing_and_dry_run(make_config, tmp_path, capsys):
    steps = {"train.train_steps": 2, "checkpoint.save_at_end": False}
    plain = pretrain(make_config("plain", **steps))
    recomputed = pretrain(make_config("ckpt", **steps, **{"model.gradient_checkpointing": True}))
    np.testing.assert_allclose(recomputed["losses"], plain["losses"], rtol=1e-6)
    assert plain["checkpoint"] is None

    from megatron_bliss.cli import main

    assert main(["pretrain", "--dry-run", *[f"run_dir={tmp_path}", "data.prefix=x"]]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["world_size"] == 1


def test_missing_shard_stops_before_tokenizer_and_model(make_config, tmp_path):
    missing = str(tmp_path / "nowhere" / "c4_text_document")
    config = make_config(
        "missing", **{"data.valid_prefix": missing, "data.tokenizer": str(tmp_path / "no_tok")}
    )
    with pytest.raises(FileNotFoundError, match=r"c4_text_document\.bin: indexed dataset"):
        pretrain(config)


@pytest.mark.parametrize("stage", [2, 3])
def test_gpu_configs_fused_adamw_trains_like_the_default(make_config, stage):
    """The GPU ds_configs ask DeepSpeed for torch's fused AdamW; it must reach the optimizer
    under ZeRO and step exactly like the unfused one (checked here on CPU)."""
    from megatron_bliss.utils.paths import REPO_ROOT

    steps = {"deepspeed.zero_stage": stage, "train.train_steps": 3}
    default = pretrain(make_config(f"default{stage}", **steps))
    fused_config = make_config(f"fused{stage}", **steps)
    gpu_json = json.loads((REPO_ROOT / "ds_configs" / "pythia_1b.json").read_text())
    fused_config.deepspeed.overrides = {"optimizer": gpu_json["optimizer"]}
    seen = {}
    hooks = Hooks(on_engine_final=lambda engine: seen.update(engine.optimizer.optimizer.defaults))
    fused = pretrain(fused_config, hooks)
    assert seen["fused"] is True
    np.testing.assert_allclose(fused["losses"], default["losses"], rtol=1e-6)


def test_cpu_mfu_is_against_the_fastest_measured_matmul(monkeypatch):
    """The peak is 2 n^3 FLOPs over the fastest of the timed matmuls (a clock that reports
    3, 1 and 2 ms for them must give 2 * 256^3 / 1 ms)."""
    from megatron_bliss.engine import metrics

    ticks = iter([0.0, 0.003, 1.0, 1.001, 2.0, 2.002])
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(ticks))
    measured = metrics.measured_matmul_flops("fp32", size=256, repeats=3)
    monkeypatch.undo()
    assert measured == pytest.approx(2 * 256**3 / 0.001)
    cpu = torch.device("cpu")
    assert metrics.device_peak_flops(cpu, "fp32", None, 5e10) == 5e10  # cpu_peak_flops wins
    assert metrics.device_peak_flops(cpu, "fp32", 7e12, None) == 7e12  # peak_flops wins


def test_metrics_every_log_interval_and_at_the_last_step(make_config, tmp_path):
    pretrain(make_config("sparse", **{"train.train_steps": 6, "logging.log_interval": 4}))
    steps = [r["step"] for r in read_metrics(tmp_path / "sparse") if "loss" in r]
    assert steps == [4, 6]


def test_named_held_out_sets_are_logged_beside_val_loss(make_config, tiny_shard, tmp_path):
    from megatron_bliss.data.shards import split_indexed

    second = split_indexed(tiny_shard, 2, str(tmp_path / "held"))[1]
    config = make_config(
        "named", **{"train.train_steps": 2, "data.valid_prefix": tiny_shard,
                    "logging.eval_interval": 2, "deepspeed.config": "ds_configs/cpu_zero2.json"}
    )  # fmt: skip
    config.data.valid_sets = {"other": second}
    pretrain(config)
    (record,) = [r for r in read_metrics(tmp_path / "named") if "val_loss" in r]
    assert np.isfinite(record["val_loss"]) and np.isfinite(record["val_loss/other"])
    assert record["val_loss"] != record["val_loss/other"]


def test_the_snapshot_step_is_saved_beside_the_checkpoints_and_kept(make_config, tmp_path):
    """``checkpoint.snapshot_step``: that step's state in ``snapshot/`` (the hook hears of it),
    outside ``checkpoints/``, whose pruning and resume point it does not touch."""
    config = make_config(**{"train.train_steps": 4, "checkpoint.keep_last": 1})
    config.checkpoint.snapshot_step = 3
    snapshots = []
    summary = pretrain(config, Hooks(on_snapshot=snapshots.append))
    run_dir = Path(summary["run_dir"])
    assert snapshots == [str(run_dir / "snapshot" / "global_step3")]
    assert (run_dir / "snapshot/latest").read_text() == "global_step3"
    assert (run_dir / "snapshot/global_step3/complete.json").exists()
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("global_step*")) == [
        "global_step4"
    ]
