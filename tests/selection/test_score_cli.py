"""``megatron-bliss score`` checks its outputs before the scoring: an --out that is a directory and
a --fraction that keeps nothing are one line with nothing written; two --fraction runs into one
folder keep their own selection files."""

from __future__ import annotations

import json

import numpy as np
import pytest

import megatron_bliss.selection.scoring as scoring
from megatron_bliss.cli import main


@pytest.fixture(scope="module")
def scorer(tmp_path_factory, tokenizer):
    import torch

    from megatron_bliss.models.presets import build_model
    from megatron_bliss.selection.score_model import ScoreModel

    torch.manual_seed(0)
    model = ScoreModel.from_causal_lm(build_model("pythia-tiny", 512, 65), head_init_std=0.5)
    path = tmp_path_factory.mktemp("scorer") / "score_model"
    model.save(path, {"method": "bliss", "seq_length": 64}, tokenizer=tokenizer)
    return path


def score(scorer, shard, out, *extra) -> int:
    return main(["score", "--scorer", str(scorer), "--data-prefix", shard, "--out", str(out),
                 *extra])  # fmt: skip


@pytest.fixture
def no_scoring(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("scored although the command had to stop first")

    monkeypatch.setattr(scoring, "score_range", fail)


def test_out_that_is_a_directory_stops_before_scoring(
    scorer,
    tiny_shard,
    tmp_path,
    capsys,
    no_scoring,
):
    (tmp_path / "scores").mkdir()
    assert score(scorer, tiny_shard, tmp_path / "scores", "--fraction", "0.2") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out is a directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores"]


def test_fraction_that_keeps_no_sequence_stops_before_scoring(
    scorer,
    tiny_shard,
    tmp_path,
    capsys,
    no_scoring,
):
    assert score(scorer, tiny_shard, tmp_path / "out" / "scores.npy", "--fraction", "1e-4") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "keeps none" in err[0]
    assert not (tmp_path / "out").exists()


def test_two_fraction_runs_into_one_folder_keep_both_selections(
    scorer,
    tiny_shard,
    tmp_path,
):
    folder = tmp_path / "scored"
    assert score(scorer, tiny_shard, folder / "a.npy", "--fraction", "0.5") == 0
    assert score(scorer, tiny_shard, folder / "b.npy", "--fraction", "0.1") == 0
    assert score(scorer, tiny_shard, folder / "scores.npy", "--fraction", "0.2") == 0
    kept = {}
    for name in ("a.selection", "b.selection", "selection"):
        meta = json.loads((folder / f"{name}.json").read_text())
        kept[name] = len(np.load(folder / f"{name}.npy"))
        assert kept[name] == meta["num_selected"] == int(meta["fraction"] * meta["num_sequences"])
    assert kept["a.selection"] > kept["selection"] > kept["b.selection"] > 0
