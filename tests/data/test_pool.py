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


def test_document_tail_is_a_documents_target_example_of_that_document(tmp_path):
    """The last ``length`` tokens of one document, its end-of-document token dropped."""
    prefix = build_shard(tmp_path / "d", [[5, 6, 7, 8, 0], [9, 0], [1, 2, 3]])
    pool = SequencePool(prefix, 2)
    assert pool.document_tail(0, 3, eod=0).tolist() == [6, 7, 8]
    assert pool.document_tail(0, 10, eod=0).tolist() == [5, 6, 7, 8]
    assert pool.document_tail(1, 3, eod=0).tolist() == [9]
    assert pool.document_tail(2, 2, eod=0).tolist() == [2, 3]
    assert pool.document_tail(0, 2).tolist() == [8, 0]  # no eod given: kept
    with pytest.raises(IndexError):
        pool.document_tail(3, 2)
