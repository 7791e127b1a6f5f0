"""Damaged checkpoints, made by really truncating and overwriting the files of a real run: each is
named in one line, a run directory falls back to its newest complete checkpoint with a warning,
and nothing is overwritten when no checkpoint is usable or the config cannot continue one."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from megatron_bliss.cli import main
from megatron_bliss.config import ConfigError
from megatron_bliss.engine import checkpoint as ckpt
from megatron_bliss.engine.checkpoint_integrity import CorruptCheckpoint
from megatron_bliss.engine.config import load_pretrain_config
from megatron_bliss.engine.trainer import pretrain
from tests.engine.conftest import CHECKPOINTED_STEPS as STEPS
from tests.engine.conftest import tiny_overrides

MODEL_STATES = "zero_pp_rank_0_mp_rank_00_model_states.pt"
OPTIM_STATES = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


@pytest.fixture
def run_copy(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def config_for(run_dir, tiny_shard, tokenizer_dir, **extra):
    values = {**STEPS, "train.train_steps": 6, **extra}
    return load_pretrain_config(None, tiny_overrides(tiny_shard, tokenizer_dir, run_dir, **values))


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def export(checkpoint, output, capsys) -> tuple[int, str]:
    code = main(["export-hf", "--checkpoint", str(checkpoint), "--output", str(output)])
    return code, capsys.readouterr().err.strip()


def test_save_records_every_file_and_moves_latest_after_it(trained):
    step = trained / "checkpoints" / "global_step4"
    record = json.loads((step / "complete.json").read_text())
    assert record["step"] == 4
    on_disk = {p.name: p.stat().st_size for p in step.iterdir() if p.name != "complete.json"}
    assert record["files"] == on_disk and MODEL_STATES in on_disk and OPTIM_STATES in on_disk
    assert (trained / "checkpoints" / "latest").read_text() == "global_step4"


def test_truncated_model_states_is_named_and_the_older_checkpoint_used(run_copy, capsys, caplog):
    damaged = run_copy / "checkpoints" / "global_step4" / MODEL_STATES
    truncate(damaged)
    with caplog.at_level(logging.WARNING):
        assert ckpt.resolve_checkpoint(run_copy / "checkpoints")[1] == "global_step2"
    assert "using global_step2" in caplog.text and str(damaged) in caplog.text
    capsys.readouterr()  # what the warning left on stderr
    code, err = export(damaged.parent, run_copy / "hf", capsys)  # the folder named explicitly
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{damaged}: truncated or overwritten" in err


def test_truncated_optimizer_state_resumes_from_the_older_checkpoint(
    run_copy, tiny_shard, tokenizer_dir, caplog
):
    damaged = run_copy / "checkpoints" / "global_step4" / OPTIM_STATES
    truncate(damaged, keep=0.9)
    with caplog.at_level(logging.WARNING):
        resumed = pretrain(config_for(run_copy, tiny_shard, tokenizer_dir))
    assert str(damaged) in caplog.text and "using global_step2" in caplog.text
    assert resumed["final_step"] == 6 and len(resumed["losses"]) == 4  # steps 3..6
    assert (run_copy / "checkpoints" / "latest").read_text() == "global_step6"


def test_a_torch_file_cut_without_a_record_is_still_detected(run_copy, capsys):
    """Older checkpoints have no completion record: the zip directory check still names it."""
    step = run_copy / "checkpoints" / "global_step4"
    (step / "complete.json").unlink()
    truncate(step / OPTIM_STATES)
    code, err = export(step, run_copy / "hf", capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{step / OPTIM_STATES}: unreadable torch file, truncated or corrupt" in err


def test_latest_naming_a_partial_folder_falls_back(run_copy, caplog):
    checkpoints = run_copy / "checkpoints"
    partial = checkpoints / "global_step6"
    partial.mkdir()
    shutil.copy(checkpoints / "global_step4" / "meta.json", partial / "meta.json")  # cut here
    (checkpoints / "latest").write_text("global_step6")
    with caplog.at_level(logging.WARNING):
        assert ckpt.resolve_checkpoint(checkpoints)[1] == "global_step4"
    assert f"{partial}: no *model_states.pt" in caplog.text


@pytest.mark.parametrize("damage", ["cut", "same size"])
def test_corrupt_meta_json_is_named(run_copy, capsys, damage):
    meta = run_copy / "checkpoints" / "global_step4" / "meta.json"
    text = meta.read_text()
    meta.write_text(text[: len(text) // 2] if damage == "cut" else "{" + "x" * (len(text) - 1))
    code, err = export(meta.parent, run_copy / "hf", capsys)
    assert code == 2 and len(err.splitlines()) == 1 and f"{meta}: " in err
    expected = "truncated or overwritten" if damage == "cut" else "corrupt checkpoint metadata"
    assert expected in err


def test_a_missing_file_of_the_record_is_named(run_copy, capsys):
    missing = run_copy / "checkpoints" / "global_step4" / "rng_rank0.pt"
    missing.unlink()
    code, err = export(missing.parent, run_copy / "hf", capsys)
    assert code == 2 and err.endswith(f"{missing}: missing (listed in complete.json)")


def test_no_complete_checkpoint_stops_and_overwrites_nothing(run_copy, tiny_shard, tokenizer_dir):
    checkpoints = run_copy / "checkpoints"
    (checkpoints / "latest").unlink()
    for tag in ("global_step2", "global_step4"):
        (checkpoints / tag / "complete.json").unlink()  # as if every save had been cut short
    before = (run_copy / "metrics.jsonl").read_text()
    with pytest.raises(CorruptCheckpoint, match="no complete checkpoint among 2 step folder"):
        pretrain(config_for(run_copy, tiny_shard, tokenizer_dir))
    assert (run_copy / "metrics.jsonl").read_text() == before
    assert sorted(p.name for p in checkpoints.glob("global_step*")) == [
        "global_step2",
        "global_step4",
    ]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"model.preset": "pythia-tiny-128"}, "model.preset"),
        ({"data.seq_length": 16}, "data.seq_length"),
        ({"model.vocab_size": 640}, "vocab_size"),
    ],
)
def test_resuming_with_another_model_or_length_is_one_line(
    run_copy, tiny_shard, tokenizer_dir, override, key
):
    before = (run_copy / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match=key) as stopped:
        pretrain(config_for(run_copy, tiny_shard, tokenizer_dir, **override))
    assert len(str(stopped.value).splitlines()) == 1 and "global_step4" in str(stopped.value)
    assert (run_copy / "metrics.jsonl").read_text() == before
