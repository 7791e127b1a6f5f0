"""The training dataset: deterministic, restricted to selections, blended, epoch-aware."""

import json
import logging
import sys

import numpy as np
import pytest

from megatron_bliss.data.pool import SequencePool
from megatron_bliss.data.training_dataset import DataSource, TrainingDataset, blending_indices
from tests.conftest import build_shard


@pytest.fixture
def two_shards(tmp_path):
    """Shard a holds ids 0..999 (99 sequences of 10), shard b ids 1000..1499 (49 sequences)."""
    a = build_shard(tmp_path / "a_text_document", [list(range(0, 500)), list(range(500, 1000))])
    b = build_shard(tmp_path / "b_text_document", [list(range(1000, 1500))])
    return a, b


def write_selection(path, indices, seq_length):
    np.save(path, np.asarray(indices, dtype=np.int64))
    path.with_suffix(".json").write_text(json.dumps({"seq_length": seq_length}))
    return str(path)


def all_samples(dataset):
    return np.stack([dataset[i] for i in range(len(dataset))])


def test_deterministic_and_seed_dependent(two_shards):
    a, _ = two_shards
    first = all_samples(TrainingDataset([DataSource(a)], seq_length=10, num_samples=50, seed=7))
    again = all_samples(TrainingDataset([DataSource(a)], seq_length=10, num_samples=50, seed=7))
    other = all_samples(TrainingDataset([DataSource(a)], seq_length=10, num_samples=50, seed=8))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.shape == (50, 11) and first.dtype == np.int64


def test_prefix_stable_when_num_samples_grows(two_shards):
    """Sample i does not depend on num_samples, so resuming from a counter is exact."""
    a, b = two_shards
    sources = [DataSource(a, 2.0), DataSource(b, 1.0)]
    short = all_samples(TrainingDataset(sources, seq_length=10, num_samples=60, seed=3))
    long = all_samples(TrainingDataset(sources, seq_length=10, num_samples=400, seed=3))
    np.testing.assert_array_equal(short, long[:60])


def test_samples_are_pool_sequences_and_one_epoch_is_a_permutation(two_shards):
    a, _ = two_shards
    pool = SequencePool(a, 10)
    dataset = TrainingDataset([DataSource(a)], seq_length=10, num_samples=len(pool), seed=1)
    starts = sorted(int(dataset[i][0]) for i in range(len(dataset)))
    assert starts == [i * 10 for i in range(len(pool))]
    assert dataset.epochs == {a: 1}
    np.testing.assert_array_equal(dataset[0], pool[int(dataset[0][0]) // 10])


def test_selection_restricts_samples(two_shards, tmp_path):
    a, _ = two_shards
    selected = [3, 17, 40, 41, 98]
    selection = write_selection(tmp_path / "selection.npy", selected, 10)
    dataset = TrainingDataset([DataSource(a, selection=selection)], seq_length=10, num_samples=23)
    pool = SequencePool(a, 10)
    allowed = {tuple(pool[i]) for i in selected}
    assert all(tuple(dataset[i]) in allowed for i in range(len(dataset)))
    assert dataset.epochs == {a: 5}  # 23 samples over 5 sequences


def test_epochs_reshuffle_and_are_logged(two_shards, caplog):
    _, b = two_shards
    with caplog.at_level(logging.INFO, logger="megatron_bliss.data.training_dataset"):
        dataset = TrainingDataset([DataSource(b)], seq_length=10, num_samples=49 * 3, seed=5)
    assert dataset.epochs == {b: 3}
    assert "3 epoch(s)" in caplog.text
    firsts = [[int(dataset[e * 49 + i][0]) for i in range(49)] for e in range(3)]
    for epoch in firsts:  # each epoch covers every sequence once
        assert sorted(epoch) == [1000 + 10 * i for i in range(49)]
    assert firsts[0] != firsts[1]


def test_blending_proportions(two_shards):
    a, b = two_shards
    sources = [DataSource(a, 0.75), DataSource(b, 0.25)]
    dataset = TrainingDataset(sources, seq_length=10, num_samples=400, seed=0)
    from_b = sum(int(dataset[i][0]) >= 1000 for i in range(400))
    assert from_b == 100
    assert dataset.epochs == {a: 4, b: 3}  # 300 over 99 sequences, 100 over 49


def test_numpy_blending_matches_megatron(monkeypatch):
    weights = np.array([0.5, 0.3, 0.2])
    source, rank = blending_indices(weights, 1000)
    counts = np.zeros(3, dtype=np.int64)
    for sample in range(1000):  # the documented greedy rule
        chosen = int(np.argmax(weights * max(sample, 1) - counts))
        assert source[sample] == chosen and rank[sample] == counts[chosen]
        counts[chosen] += 1
    monkeypatch.setitem(sys.modules, "megatron.core.datasets.helpers", None)
    fallback_source, fallback_rank = blending_indices(weights, 1000)
    np.testing.assert_array_equal(fallback_source, source)
    np.testing.assert_array_equal(fallback_rank, rank)


def test_vocab_check_names_shard(tmp_path):
    prefix = build_shard(tmp_path / "big_text_document", [[1, 2, 3, 700, 5, 6, 7, 8, 9]])
    TrainingDataset([DataSource(prefix)], seq_length=4, num_samples=2, vocab_size=701)
    with pytest.raises(ValueError, match=r"big_text_document: token id 700 .* 512"):
        TrainingDataset([DataSource(prefix)], seq_length=4, num_samples=2, vocab_size=512)


def test_selection_seq_length_mismatch(two_shards, tmp_path):
    a, _ = two_shards
    selection = write_selection(tmp_path / "selection.npy", [1, 2], 32)
    with pytest.raises(ValueError, match=r"seq_length 32.*seq_length 10"):
        TrainingDataset([DataSource(a, selection=selection)], seq_length=10, num_samples=4)


def test_selection_out_of_range(two_shards, tmp_path):
    a, _ = two_shards
    selection = write_selection(tmp_path / "selection.npy", [1, 99], 10)
    with pytest.raises(ValueError, match=r"\[0, 99\)"):
        TrainingDataset([DataSource(a, selection=selection)], seq_length=10, num_samples=4)


def test_selection_of_another_shard_is_refused(two_shards, tmp_path):
    """Made on shard b (49 sequences of 10), used on shard a (99): same seq_length, in range."""
    a, b = two_shards
    selection = write_selection(tmp_path / "selection.npy", [1, 2], 10)
    meta = {"seq_length": 10, "num_sequences": len(SequencePool(b, 10)), "data_prefix": b}
    (tmp_path / "selection.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"pool of 49 sequences .*this shard has 99"):
        TrainingDataset([DataSource(a, selection=selection)], seq_length=10, num_samples=4)


def test_selection_that_is_not_an_npy_is_one_line(two_shards, tmp_path):
    a, _ = two_shards
    (tmp_path / "selection.npy").write_text("1,2,3\n")
    selection = str(tmp_path / "selection.npy")
    with pytest.raises(ValueError, match=r"selection\.npy: not a selection \.npy") as error:
        TrainingDataset([DataSource(a, selection=selection)], seq_length=10, num_samples=4)
    assert "\n" not in str(error.value)


def test_cache_round_trip(two_shards, tmp_path):
    a, b = two_shards
    sources = [DataSource(a), DataSource(b, 0.5)]
    built = TrainingDataset(sources, 10, 120, seed=2, cache_dir=str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache").glob("training_index_*.npy"))) == 1
    cached = TrainingDataset(sources, 10, 120, seed=2, cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(all_samples(built), all_samples(cached))
    assert len(cached) == 120
    with pytest.raises(IndexError):
        cached[120]


def test_a_reader_waits_for_the_builders_cache(two_shards, tmp_path):
    a, b = two_shards
    sources = [DataSource(a), DataSource(b, 0.5)]
    cache = str(tmp_path / "cache")
    waited = []

    def builder_finishes(path):  # stands in for rank 0 writing the file meanwhile
        waited.append(path.name)
        TrainingDataset(sources, 10, 120, seed=2, cache_dir=cache)

    reader = TrainingDataset(
        sources, 10, 120, seed=2, cache_dir=cache, wait_for_cache=builder_finishes
    )
    assert waited == [f"training_index_{reader.cache_key()}.npy"]
    assert isinstance(reader.sample_index, np.memmap)  # read from the builder's file
    built = TrainingDataset(sources, 10, 120, seed=2, cache_dir=cache, wait_for_cache=waited.append)
    assert len(waited) == 1  # the file exists: no wait
    np.testing.assert_array_equal(all_samples(reader), all_samples(built))
