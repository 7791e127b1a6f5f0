"""Adding a selection method is one module plus one registry line: a toy selector defined in
this file, registered here, runs through ``select`` and through pipeline rounds, with its own
config section, what it needs and what it carries from round to round."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import yaml

from megatron_bliss.cli import main
from megatron_bliss.selection.base import Selector
from megatron_bliss.selection.registry import SELECTORS


class ToySelector(Selector):
    """Scores a sequence by its mean token id; leaves a note that later rounds are handed."""

    name = "toy"
    uses_target_model = False
    needs_target_set = False
    shared_outputs = ("toy_notes",)

    @dataclass
    class Config:
        sign: float = 1.0
        """+1 keeps the highest mean token ids, -1 the lowest."""
        previous: str = ""
        """Filled in by a pipeline from the earlier rounds (see ``carry_over``)."""

    @classmethod
    def carry_over(cls, config, earlier) -> dict:
        return {"previous": f"round {earlier.round} after {earlier.previous_dir.name}"}

    @classmethod
    def exported_adam_layers(cls, config) -> list[str]:
        return ["down_proj"]

    def fit(self) -> None:
        notes = self.context.run_dir / "toy_notes"
        notes.mkdir(parents=True, exist_ok=True)
        (notes / "made_by.txt").write_text(self.config.previous or "select")

    def score(self) -> np.ndarray:
        tokens = self.context.pool.batch(np.arange(len(self.context.pool)))
        return (self.config.sign * tokens.mean(axis=1)).astype(np.float32)

    def summary(self) -> dict:
        return {"toy_previous": self.config.previous}


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    monkeypatch.setitem(SELECTORS, "toy", f"{__name__}:ToySelector")  # the one registry line


def test_select_runs_a_registered_selector_with_its_own_section(tmp_path, tiny_shard):
    config = tmp_path / "select.yaml"
    config.write_text(yaml.safe_dump({"seq_length": 32, "toy": {"sign": -1.0}}))
    run_dir = tmp_path / "run"
    argv = ["select", "--method", "toy", "--config", str(config), "--data-prefix", tiny_shard,
            "--run-dir", str(run_dir), "--fraction", "0.5"]  # fmt: skip
    assert main(argv) == 0
    scores, selection = np.load(run_dir / "scores.npy"), np.load(run_dir / "selection.npy")
    assert len(selection) == len(scores) // 2
    assert scores[selection].min() >= np.delete(scores, selection).max()
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["method"] == "toy" and resolved["toy"]["sign"] == -1.0
    assert (run_dir / "toy_notes" / "made_by.txt").read_text() == "select"


def test_a_registered_selector_section_is_validated_by_its_config(tmp_path, tiny_shard, capsys):
    argv = ["select", "--method", "toy", "--data-prefix", tiny_shard, "--run-dir",
            str(tmp_path / "run"), "seq_length=32", "toy.sing=2"]  # fmt: skip
    assert main(argv) == 2
    assert "toy: unknown key 'sing' (did you mean 'sign'?" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_pipeline_rounds_ask_the_selector_what_it_carries(tmp_path, tiny_shard, tokenizer_dir):
    from megatron_bliss.config import from_dict
    from megatron_bliss.data.shards import split_indexed
    from megatron_bliss.pipeline.config import PipelineConfig
    from megatron_bliss.pipeline.runner import run_pipeline

    shards = split_indexed(tiny_shard, 3, str(tmp_path / "tiny"))
    config = from_dict(PipelineConfig, {
        "run_dir": str(tmp_path / "run"), "method": "toy", "shards": shards,
        "tokenizer": str(tokenizer_dir), "seq_length": 32, "warmup_steps": 2, "round_steps": 1,
        "warmup_fraction": 0.5, "fraction": 0.5, "eval": {"enabled": False},
        "pretrain": {
            "model": {"preset": "pythia-tiny"},
            "train": {"global_batch_size": 4, "micro_batch_size": 4},
            "deepspeed": {"config": "ds_configs/cpu_zero2.json"},
            "logging": {"progress_bar": False},
        },
        "select": {"toy": {"sign": 1.0}},
    })  # fmt: skip
    summary = run_pipeline(config)
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    run = tmp_path / "run"
    for r, previous in ((1, "round_0"), (2, "round_1")):
        meta = json.loads((run / f"round_{r}" / "selection.json").read_text())
        assert meta["method"] == "toy" and meta["toy_previous"] == f"round {r} after {previous}"
        stage = yaml.safe_load((run / f"round_{r}" / "config.yaml").read_text())
        assert stage["checkpoint"]["adam_state_params"] == ["down_proj"]  # exported_adam_layers
    assert (run / "toy_notes" / "made_by.txt").read_text() == "round 1 after round_0"  # kept once
