"""Shard scoring: equal to a plain loop, resumable after a kill, refuses foreign leftovers; the rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_bliss.selection.rule import select_top_fraction
from megatron_bliss.selection.score_model import ScoreModel, load_score_model
from megatron_bliss.selection.scoring import score_shard

SEQ = 64  # ~900 sequences in the tiny shard: the plain reference loop stays fast


class Killed(RuntimeError):
    pass


@pytest.fixture(scope="module")
def scorer_dir(tmp_path_factory, tokenizer):
    from megatron_bliss.models.presets import build_model

    torch.manual_seed(0)
    lm = build_model("pythia-tiny", 512, 65)
    model = ScoreModel.from_causal_lm(lm, head_init_std=0.5, seed=1)
    path = tmp_path_factory.mktemp("scorer") / "score_model"
    model.save(path, {"method": "bliss", "seq_length": SEQ}, tokenizer=tokenizer)
    return path


def plain_loop_scores(scorer_dir, shard, seq_length=SEQ):
    """The research-script loop: micro-batches of 4 pool sequences under no_grad (the score
    model's logit: what scores.npy holds)."""
    from megatron_bliss.data.pool import SequencePool

    model = load_score_model(scorer_dir)
    pool = SequencePool(shard, seq_length)
    out = []
    with torch.no_grad():
        for start in range(0, len(pool), 4):
            batch = torch.from_numpy(pool.batch(range(start, min(len(pool), start + 4))))
            out.append(model.logits(batch[:, :-1]).numpy())
    return np.concatenate(out)


@pytest.fixture(scope="module")
def reference(scorer_dir, tiny_shard):
    return plain_loop_scores(scorer_dir, tiny_shard)


def test_scores_match_plain_loop(scorer_dir, tiny_shard, tmp_path, reference):
    scores = score_shard(
        scorer_dir, tiny_shard, tmp_path / "scores.npy", batch_size=32, precision="float32"
    )
    np.testing.assert_allclose(scores, reference, rtol=1e-5)
    assert scores.std() > 0
    np.testing.assert_array_equal(np.load(tmp_path / "scores.npy"), scores)


def test_resume_after_kill_scores_only_missing_chunks(scorer_dir, tiny_shard, tmp_path, reference):
    out = tmp_path / "scores.npy"

    def kill_after_two(chunk):
        if chunk == 1:
            raise Killed

    with pytest.raises(Killed):
        score_shard(
            scorer_dir,
            tiny_shard,
            out,
            chunk_size=200,
            on_chunk=kill_after_two,
            precision="float32",
        )
    assert not out.exists()
    parts = sorted(p.name for p in (tmp_path / "scores.npy.parts").glob("chunk_*.npy"))
    assert parts == ["chunk_000000.npy", "chunk_000001.npy"]
    resumed = []
    scores = score_shard(
        scorer_dir, tiny_shard, out, chunk_size=200, on_chunk=resumed.append, precision="float32"
    )
    assert resumed and resumed[0] == 2  # chunks 0 and 1 were not scored again
    np.testing.assert_allclose(scores, reference, rtol=1e-5)
    assert not (tmp_path / "scores.npy.parts").exists()


def test_two_processes_split_chunks_and_last_one_merges(
    scorer_dir, tiny_shard, tmp_path, reference
):
    out = tmp_path / "scores.npy"
    first = score_shard(
        scorer_dir, tiny_shard, out, chunk_size=300, rank=1, world=2, precision="float32"
    )
    assert first is None and not out.exists()
    merged = score_shard(
        scorer_dir, tiny_shard, out, chunk_size=300, rank=0, world=2, precision="float32"
    )
    np.testing.assert_allclose(merged, reference, rtol=1e-5)


def test_leftovers_from_other_settings_are_refused(scorer_dir, tiny_shard, tmp_path):
    out = tmp_path / "scores.npy"
    with pytest.raises(Killed):
        score_shard(scorer_dir, tiny_shard, out, chunk_size=200, on_chunk=_raise)
    with pytest.raises(ValueError, match="other settings"):
        score_shard(scorer_dir, tiny_shard, out, chunk_size=250)


def _raise(_chunk):
    raise Killed


def test_not_a_scorer_directory(tmp_path, tiny_shard):
    with pytest.raises(FileNotFoundError, match=r"score_model\.json"):
        score_shard(tmp_path, tiny_shard, tmp_path / "s.npy")


def test_rule_ties_go_to_lower_index_and_gumbel_is_seeded():
    scores = np.array([1.0, 3.0, 3.0, 0.5, 3.0, 2.0], dtype=np.float32)
    np.testing.assert_array_equal(select_top_fraction(scores, 0.34), [1, 2])
    np.testing.assert_array_equal(select_top_fraction(scores, 0.5), [1, 2, 4])
    a = select_top_fraction(scores, 0.5, seed=3, gumbel_temperature=5.0)
    b = select_top_fraction(scores, 0.5, seed=3, gumbel_temperature=5.0)
    np.testing.assert_array_equal(a, b)
    draws = {tuple(select_top_fraction(scores, 0.5, s, 5.0)) for s in range(20)}
    assert len(draws) > 1


@pytest.mark.parametrize(
    ("setting", "message"),
    [({"seq_length": 0}, "--seq-length must be at least 1"),
     ({"batch_size": 0}, "--batch-size must be at least 1"),
     ({"chunk_size": 0}, "--chunk-size must be at least 1")],
)  # fmt: skip
def test_sizes_below_one_stop_before_any_file(scorer_dir, tiny_shard, tmp_path, setting, message):
    with pytest.raises(ValueError, match=message):
        score_shard(scorer_dir, tiny_shard, tmp_path / "out" / "scores.npy", **setting)
    assert not (tmp_path / "out").exists()


def test_shard_shorter_than_one_sequence_stops_before_any_file(scorer_dir, tmp_path):
    from tests.conftest import build_shard

    short = build_shard(tmp_path / "short_text_document", [[1, 2, 3]])
    with pytest.raises(ValueError, match=r"short_text_document: 3 tokens hold no sequence"):
        score_shard(scorer_dir, short, tmp_path / "out" / "scores.npy")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("fraction", "temperature"), [(0.0, 0.0), (1.5, 0.0), (0.5, -1.0)])
def test_rule_rejects_unusable_settings(fraction, temperature):
    with pytest.raises(ValueError, match=r"fraction must be in|gumbel_temperature must be"):
        select_top_fraction(np.zeros(4), fraction, 0, temperature)
    np.testing.assert_array_equal(select_top_fraction(np.arange(4.0), 1.0), [0, 1, 2, 3])


def test_shard_of_another_vocabulary_is_one_line_not_an_index_error(scorer_dir, tmp_path):
    from tests.conftest import build_shard

    shard = build_shard(tmp_path / "wide_text_document", [[5, 600, 7] * 40])
    with pytest.raises(ValueError, match=r"wide_text_document: holds token id 600, beyond the 512"):
        score_shard(scorer_dir, shard, tmp_path / "out" / "scores.npy")
    assert not (tmp_path / "out").exists()
