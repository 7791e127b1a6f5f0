import numpy as np
import pytest

from megatron_bliss.data.pool import SequencePool
from tests.conftest import build_shard


def test_pool_follows_contract(tmp_path):
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]
    prefix = build_shard(tmp_path / "p_text_document", docs)
    pool = SequencePool(prefix, seq_length=3)
    flat = np.arange(1, 11)
    assert pool.num_tokens == 10
    assert len(pool) == (10 - 1) // 3 == 3
    for i in range(len(pool)):
        np.testing.assert_array_equal(pool[i], flat[i * 3 : (i + 1) * 3 + 1])
    with pytest.raises(IndexError):
        pool[3]
    np.testing.assert_array_equal(pool.batch([2, 0]), np.stack([pool[2], pool[0]]))


def test_pool_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere"):
        SequencePool(tmp_path / "nothere", 4)


def test_shard_shorter_than_one_sequence_is_one_clear_error(tmp_path):
    prefix = build_shard(tmp_path / "s_text_document", [[1, 2, 3], [4]])
    assert SequencePool(prefix, 3).require_sequences().num_sequences == 1
    with pytest.raises(ValueError, match=r"s_text_document: 4 tokens hold no sequence of length 4"):
        SequencePool(prefix, 4).require_sequences()
