"""The selection recipe of a pretrain YAML as one 2-rank SPMD job (the launch scripts' form)
against ``megatron-bliss pipeline`` in one process on the same config: the same selection bytes
and the same losses (1 and 2 ranks differ only in the order of the gradient sums, as the elastic
resume tests show); rerunning the finished job skips every stage on every rank.

The method is DSIR, which rank 0 runs while rank 1 waits (BLISS runs on both ranks, but its
scores on 2 ranks are not those of 1 rank: ``megatron-bliss select`` alone differs between 1 and 2
ranks from the first outer step, so no pipeline could give the same bytes). The comparison run
skips the evaluation (it decides nothing that is compared); the SPMD run evaluates the last round
on rank 0 while rank 1 waits.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from megatron_bliss.cli import main
from megatron_bliss.config import dump_yaml, merge, read_yaml
from megatron_bliss.pipeline.recipe import recipe_config
from tests.engine.torchrun import run_two_ranks

WORKER = Path(__file__).with_name("recipe_worker.py")
KILL_WORKER = Path(__file__).with_name("kill_worker.py")
EVAL = {"limit": 2, "last_round_only": True}


TINY_BLISS = {
    "proxy_preset": "pythia-tiny", "proxy_warmup_steps": 2, "outer_steps": 2, "batch_size": 4,
    "target_batch_size": 4, "upper_batch_size": 4, "score_batch_size": 16,
}  # fmt: skip


def write_pretrain_yaml(
    path: Path, run_dir: Path, shard: str, tokenizer: str, target: Path, **selection
):
    values = {
        "run_dir": str(run_dir),
        "model": {"preset": "pythia-tiny"},
        "data": {"prefix": shard, "tokenizer": tokenizer, "seq_length": 32},
        "train": {"global_batch_size": 4, "micro_batch_size": 2, "train_steps": 100},
        "schedule": {"type": "constant", "warmup_steps": 1},
        "deepspeed": {"config": "ds_configs/cpu_zero2.json"},
        "checkpoint": {"save_interval": 2},
        "logging": {"progress_bar": False},
        "selection": {
            "enabled": True,
            "method": "dsir",
            "num_rounds": 1,
            "warmup_steps": 4,
            "warmup_fraction": 0.5,
            "round_steps": 3,
            "fraction": 0.25,
            "target_data": str(target),
            "select": {
                "target_preset": "pythia-tiny",
                "target_max_length": 32,
                "device": "cpu",
                "bliss": TINY_BLISS,
            },
            "eval": {"tasks": [], "task_data": None, "ppl_data": str(target), **EVAL},
        },
    }
    values["selection"].update(selection)
    path.write_text(yaml.safe_dump(values, sort_keys=False))


def losses(round_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (round_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def markers(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): p.read_text() for p in run_dir.rglob("stages/*.json")}


@pytest.fixture(scope="module")
def spmd_run(tiny_shard, tokenizer_dir, corpus_texts, tmp_path_factory):
    """One uninterrupted 2-rank run of the recipe: ``(pretrain.yaml, run dir, target set)``."""
    folder = tmp_path_factory.mktemp("spmd")
    target = folder / "target.jsonl"
    target.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus_texts[-8:]))
    config_path = folder / "pretrain.yaml"
    write_pretrain_yaml(config_path, folder / "spmd", tiny_shard, str(tokenizer_dir), target)
    run_two_ranks(WORKER, str(config_path))  # data.prefix dealt into 2 shards, then the rounds
    return config_path, folder / "spmd", target


@pytest.mark.slow
def test_two_rank_recipe_matches_the_pipeline_command_and_resumes(spmd_run, tmp_path):
    config_path, spmd, _ = spmd_run
    assert (spmd / "pipeline.json").exists() and (spmd / "round_1/eval.json").exists()
    single = tmp_path / "single"

    shards = json.loads((spmd / "data/stages/split.json").read_text())["result"]["shards"]
    pretrain = merge(read_yaml(config_path), {"run_dir": str(single)})
    config = recipe_config(merge(pretrain, {"selection": {"shards": shards}}), "dsir")
    config.eval.enabled = False
    dump_yaml(config, tmp_path / "pipeline.yaml")
    assert main(["pipeline", "--config", str(tmp_path / "pipeline.yaml")]) == 0

    for r in (0, 1):
        ours, theirs = spmd / f"round_{r}", single / f"round_{r}"
        assert (ours / "selection.npy").read_bytes() == (theirs / "selection.npy").read_bytes()
        np.testing.assert_allclose(losses(ours), losses(theirs), rtol=1e-5)
    np.testing.assert_allclose(
        np.load(spmd / "round_1/scores.npy"), np.load(single / "round_1/scores.npy"), rtol=1e-4
    )

    finished = markers(spmd)
    run_two_ranks(WORKER, str(config_path))  # the same command again: every stage is skipped
    assert markers(spmd) == finished and len(finished) == 6  # split, 2 x (select, train), eval


def run_killable_job(config: Path, plan: str, flags: Path) -> subprocess.CompletedProcess:
    """The 2-rank job under ``kill_worker.py`` with its KILL_PLAN (the exit code unchecked)."""
    env = {"KILL_PLAN": plan, "KILL_FLAGS": str(flags)}
    return run_two_ranks(KILL_WORKER, str(config), env=env, check=False)


@pytest.mark.slow
def test_sigkill_of_any_rank_resumes_at_its_stage_with_the_same_results(spmd_run, tmp_path):
    """Rank 0 killed inside round 1's select stage, then rank 1 right after round 1's training
    saved step 6: each rerun of the same command resumes there (the select stage again, the
    training from its own step-6 checkpoint) and the run ends as the uninterrupted one did."""
    config_path, reference, target = spmd_run
    run_dir, config, flags = tmp_path / "run", tmp_path / "pretrain.yaml", tmp_path / "flags"
    flags.mkdir()
    write_pretrain_yaml(config, run_dir, *inputs_of(config_path), target)
    plan = "1:select:0,1:checkpoint:6:1"

    crashed = run_killable_job(config, plan, flags)
    assert crashed.returncode != 0 and (flags / "killed_0").exists()
    assert (run_dir / "round_0/stages/train.json").exists()
    assert not (run_dir / "round_1/stages/select.json").exists()

    crashed = run_killable_job(config, plan, flags)
    assert crashed.returncode != 0 and (flags / "killed_1").exists()
    assert (run_dir / "round_1/stages/select.json").exists()
    assert not (run_dir / "round_1/stages/train.json").exists()
    assert (run_dir / "round_1/checkpoints/latest").read_text() == "global_step6"

    finished = run_killable_job(config, plan, flags)
    assert finished.returncode == 0, finished.stderr[-4000:]
    assert "global_step6" in finished.stderr  # resumed from the killed stage's own checkpoint
    for r in (0, 1):
        ours, theirs = run_dir / f"round_{r}", reference / f"round_{r}"
        assert (ours / "selection.npy").read_bytes() == (theirs / "selection.npy").read_bytes()
        np.testing.assert_allclose(losses(ours), losses(theirs), rtol=1e-6)
    assert markers(run_dir).keys() == markers(reference).keys()


def inputs_of(config_path: Path) -> tuple[str, str]:
    """``(data prefix, tokenizer)`` of a pretrain YAML written by ``write_pretrain_yaml``."""
    data = read_yaml(config_path)["data"]
    return data["prefix"], data["tokenizer"]
