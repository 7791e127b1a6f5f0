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
from pathlib import Path

import numpy as np
import pytest
import yaml

from megatron_bliss.cli import main
from megatron_bliss.config import dump_yaml, merge, read_yaml
from megatron_bliss.pipeline.recipe import recipe_config
from tests.engine.torchrun import run_two_ranks

WORKER = Path(__file__).with_name("recipe_worker.py")
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


@pytest.mark.slow
def test_two_rank_recipe_matches_the_pipeline_command_and_resumes(
    tiny_shard, tokenizer_dir, corpus_texts, tmp_path
):
    target = tmp_path / "target.jsonl"
    target.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus_texts[-8:]))
    spmd, single = tmp_path / "spmd", tmp_path / "single"
    config_path = tmp_path / "pretrain.yaml"
    write_pretrain_yaml(config_path, spmd, tiny_shard, str(tokenizer_dir), target)

    run_two_ranks(WORKER, str(config_path))  # data.prefix dealt into 2 shards, then the rounds
    assert (spmd / "pipeline.json").exists() and (spmd / "round_1/eval.json").exists()

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
