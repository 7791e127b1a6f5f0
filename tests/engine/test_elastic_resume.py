"""Elastic resume: a checkpoint written by 2 ranks continues on 1 rank and one written by 1 rank
continues on 2, through DeepSpeed's universal checkpoint, with the losses of an uninterrupted run
(ZeRO-2 and ZeRO-3, fp32; only the reduction order differs)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_bliss.config import ConfigError
from megatron_bliss.engine import checkpoint as ckpt
from megatron_bliss.engine.distributed import DistributedContext
from tests.engine.torchrun import run_two_ranks

sys.path.insert(0, str(Path(__file__).parent))
from elastic_worker import STEPS, STOP_AFTER, elastic_config, stop_after_checkpoint

STAGES = (2, 3)
SAMPLES_PER_STEP = 8  # tiny_overrides' global batch


@pytest.fixture(scope="module")
def elastic_runs(tiny_shard, tokenizer_dir, tmp_path_factory):
    """One-rank runs stopped at step 4 here, then one torchrun doing the two-rank side."""
    out = tmp_path_factory.mktemp("elastic")
    for stage in STAGES:
        stop_after_checkpoint(
            elastic_config(tiny_shard, tokenizer_dir, out / f"one_z{stage}", stage)
        )
    worker = Path(__file__).with_name("elastic_worker.py")
    run_two_ranks(worker, tiny_shard, str(tokenizer_dir), str(out), *map(str, STAGES))
    results = json.loads((out / "results.json").read_text())
    return out, {int(stage): values for stage, values in results.items()}


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_two_ranks_resume_on_one(elastic_runs, tiny_shard, tokenizer_dir, stage, caplog):
    from megatron_bliss.engine.trainer import pretrain

    out, results = elastic_runs
    full = results[stage]["full"]
    assert results[stage]["world_size"] == 2 and len(full) == STEPS
    run_dir = out / f"two_z{stage}"
    with caplog.at_level(logging.INFO, logger="megatron_bliss.engine.trainer"):
        resumed = pretrain(elastic_config(tiny_shard, tokenizer_dir, run_dir, stage))
    assert "written by 2 rank(s)" in caplog.text and "this run has 1" in caplog.text
    assert resumed["world_size"] == 1 and resumed["final_step"] == STEPS
    assert resumed["consumed_samples"] == STEPS * SAMPLES_PER_STEP
    np.testing.assert_allclose(resumed["losses"], full[STOP_AFTER:], rtol=1e-5)
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / ckpt.universal_tag(ckpt.tag_for(STOP_AFTER))).is_dir()
    assert not (checkpoints / "latest_universal").exists()
    assert not list(checkpoints.glob(".*tmp"))
    # The checkpoint written after the elastic resume is a normal one-rank checkpoint.
    assert (checkpoints / "latest").read_text().strip() == ckpt.tag_for(STEPS)
    assert ckpt.read_meta(checkpoints, ckpt.tag_for(STEPS))["world_size"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_one_rank_resumes_on_two(elastic_runs, stage):
    _, results = elastic_runs
    runs = results[stage]
    assert runs["grown_final_step"] == STEPS
    assert runs["grown_consumed_samples"] == STEPS * SAMPLES_PER_STEP
    np.testing.assert_allclose(runs["grown"], runs["full"][STOP_AFTER:], rtol=1e-5)


@pytest.mark.slow
def test_stage_change_stops_with_one_line(elastic_runs, tiny_shard, tokenizer_dir, tmp_path):
    """DeepSpeed's ZeRO-2 universal layout does not load under ZeRO-3: a clear stop, not a crash."""
    from megatron_bliss.engine.trainer import pretrain

    out, _ = elastic_runs
    source = out / "two_z2" / "checkpoints" / ckpt.tag_for(STOP_AFTER)
    config = elastic_config(
        tiny_shard, tokenizer_dir, tmp_path / "restaged", 3, **{"checkpoint.load": str(source)}
    )
    with pytest.raises(ConfigError, match="ZeRO stage 2, this run uses stage 3"):
        pretrain(config)


def test_elastic_resume_rules():
    where = Path("ckpt")
    assert not ckpt.needs_universal({"world_size": 2, "zero_stage": 3}, 2, 3, where, True)
    assert ckpt.needs_universal({"world_size": 4, "zero_stage": 2}, 2, 2, where, True)
    with pytest.raises(ConfigError, match=r"written by 4 ranks, this run has 2.*elastic_resume"):
        ckpt.needs_universal({"world_size": 4, "zero_stage": 2}, 2, 2, where, False)
    with pytest.raises(ConfigError, match="needs ZeRO stage 1-3"):
        ckpt.needs_universal({"world_size": 4, "zero_stage": 0}, 2, 0, where, True)
    with pytest.raises(ConfigError, match="ZeRO stage 2, this run uses stage 3"):
        ckpt.needs_universal({"world_size": 4, "zero_stage": 2}, 2, 3, where, True)


def test_prune_removes_universal_copy_with_its_tag(tmp_path):
    for name in ("global_step2", "global_step2_universal", "global_step4", "global_step6"):
        (tmp_path / name).mkdir()
    (tmp_path / "global_step4_universal").mkdir()
    ckpt.prune_checkpoints(tmp_path, keep_last=2, protect="global_step6")
    left = sorted(entry.name for entry in tmp_path.iterdir())
    assert left == ["global_step4", "global_step4_universal", "global_step6"]


def test_conversion_without_optimizer_states_stops_with_one_line(tmp_path):
    (tmp_path / "global_step2").mkdir()
    (tmp_path / "global_step2" / "mp_rank_00_model_states.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="no optimizer states"):
        ckpt.convert_to_universal(tmp_path, "global_step2", DistributedContext())
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["global_step2"]


def test_saving_a_tag_again_drops_its_stale_universal_copy(tmp_path):
    """A run restarted from scratch in the same folder must not reuse an old step's conversion."""

    class ShardWriter:  # stands in for the DeepSpeed engine: writes one shard file
        def save_checkpoint(self, path, tag, client_state, save_latest):
            assert not save_latest  # `latest` is written after the completion record
            (Path(path) / tag / "mp_rank_00_model_states.pt").write_bytes(b"shard")

    (tmp_path / "global_step2_universal").mkdir()
    ckpt.save_checkpoint(ShardWriter(), tmp_path, 2, {"step": 2}, rank=0, keep_last=2)
    assert not (tmp_path / "global_step2_universal").exists()
    assert (tmp_path / "global_step2" / "meta.json").exists()
