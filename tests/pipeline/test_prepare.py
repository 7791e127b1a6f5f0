"""The prepare stages: a warm-up-only corpus lands in shard 0 alone, and the target set splits
into disjoint selection and held-out parts, without documents that are also in the pool."""

from __future__ import annotations

import json

import pytest

from megatron_bliss.data.pool import SequencePool
from megatron_bliss.pipeline.prepare import PrepareSection, prepare_shards, split_target_set


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_warmup_corpus_goes_into_shard_zero_only(tmp_path, corpus_texts, tokenizer_dir):
    pool = write_jsonl(tmp_path / "pool.jsonl", corpus_texts[:30])
    extra = write_jsonl(tmp_path / "extra.jsonl", corpus_texts[30:40])
    section = PrepareSection(corpus=[str(pool)], warmup_corpus=[str(extra)], workers=1)
    prepared = prepare_shards(section, tmp_path / "run", str(tokenizer_dir), 3)
    documents = [len(SequencePool(s, 1).document_lengths) for s in prepared.shards]
    assert documents == [10 + 10, 10, 10]
    again = prepare_shards(section, tmp_path / "run", str(tokenizer_dir), 3)
    assert again == prepared  # finished: reused, not rebuilt


def test_target_split_is_disjoint_deterministic_and_drops_pool_documents(
    tmp_path, corpus_texts, tokenizer_dir
):
    pool = write_jsonl(tmp_path / "pool.jsonl", corpus_texts[:20])
    target = write_jsonl(tmp_path / "target.jsonl", corpus_texts[15:40])  # 5 also in the pool
    split = split_target_set(target, 0.4, tmp_path / "a", str(tokenizer_dir), [str(pool)])

    def texts(path):
        return [json.loads(line)["text"] for line in open(path)]

    select, heldout = texts(split.select), texts(split.heldout)
    assert len(select) == 12 and len(heldout) == 8
    assert not set(select) & set(heldout)
    assert not (set(select) | set(heldout)) & set(corpus_texts[:20])
    other = split_target_set(target, 0.4, tmp_path / "b", str(tokenizer_dir), [str(pool)])
    assert texts(other.heldout) == heldout
    assert len(SequencePool(split.heldout_prefix, 1).document_lengths) == 8


def test_a_target_set_too_small_to_split_is_one_line(tmp_path, corpus_texts, tokenizer_dir):
    target = write_jsonl(tmp_path / "target.jsonl", corpus_texts[:1])
    with pytest.raises(ValueError, match="cannot be split"):
        split_target_set(target, 0.5, tmp_path / "a", str(tokenizer_dir))
