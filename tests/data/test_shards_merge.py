"""Compact builder bytes, merge, shards (round-robin, non-overlapping) and restartable partitions."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megatron_bliss.cli import main
from megatron_bliss.data.indexed import CompactIndexedDatasetBuilder
from megatron_bliss.data.merge import merge_datasets
from megatron_bliss.data.pool import SequencePool
from megatron_bliss.data.shards import split_indexed
from tests.conftest import build_shard
from tests.data.conftest import documents_of, preprocess, read_bytes, write_jsonl

DOCS = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10], [11], [12, 13]]


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_compact_builder_writes_megatron_bytes(tmp_path, dtype):
    reference = build_shard(tmp_path / "ref", DOCS, dtype=dtype)
    builder = CompactIndexedDatasetBuilder(str(tmp_path / "ours.bin"), dtype=dtype)
    builder.add_documents(np.concatenate(DOCS[:4]), np.array([len(d) for d in DOCS[:4]]))
    for doc in DOCS[4:]:  # the upstream per-item API still works
        builder.add_item(torch.tensor(doc))
        builder.end_document()
    builder.finalize(str(tmp_path / "ours.idx"))
    assert read_bytes(tmp_path / "ours") == read_bytes(reference)


def test_merge_equals_upstream_add_index(tmp_path):
    first = build_shard(tmp_path / "a", DOCS[:2])
    second = build_shard(tmp_path / "b", DOCS[2:])
    upstream = IndexedDatasetBuilder(str(tmp_path / "up.bin"), dtype=np.uint16)
    upstream.add_index(first)
    upstream.add_index(second)
    upstream.finalize(str(tmp_path / "up.idx"))
    assert main(["merge-datasets", "--input", first, second,
                 "--output-prefix", str(tmp_path / "m")]) == 0  # fmt: skip
    assert read_bytes(tmp_path / "m") == read_bytes(tmp_path / "up")
    assert read_bytes(tmp_path / "m") == read_bytes(build_shard(tmp_path / "all", DOCS))


def test_merge_refuses_mixed_dtypes(tmp_path):
    first = build_shard(tmp_path / "a", DOCS[:2])
    wide = build_shard(tmp_path / "b", DOCS[2:], dtype=np.int32)
    with pytest.raises(ValueError, match="b: token dtype int32"):
        merge_datasets([first, wide], str(tmp_path / "m"))
    assert not (tmp_path / "m.bin").exists()


def test_split_indexed_round_robin(tmp_path):
    prefix = build_shard(tmp_path / "c_text_document", DOCS)
    finals = split_indexed(prefix, 3, str(tmp_path / "s"))
    assert finals[1].endswith("s_shard1_text_document")
    for k, final in enumerate(finals):
        assert [list(d) for d in documents_of(final)] == DOCS[k::3]
        assert json.loads(Path(final + ".json").read_text())["documents"] == 2


def test_preprocess_shards_match_split(tmp_path, corpus_texts, tokenizer_dir):
    source = write_jsonl(tmp_path / "c.jsonl", corpus_texts[:40])
    preprocess(source, tmp_path / "full", tokenizer_dir)
    preprocess(source, tmp_path / "sh", tokenizer_dir, shards=3, workers=2, batch_lines=7)
    split = split_indexed(str(tmp_path / "full_text_document"), 3, str(tmp_path / "split"))
    for k in range(3):
        ours = tmp_path / f"sh_shard{k}_text_document"
        assert read_bytes(ours) == read_bytes(split[k])
        assert SequencePool(ours, 8).num_tokens > 0


def test_partitions_resume_and_match_single_run(tmp_path, corpus_texts, tokenizer_dir, caplog):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for number in range(3):
        write_jsonl(inputs / f"part{number}.jsonl", corpus_texts[number * 15 : number * 15 + 15])
    preprocess(inputs, tmp_path / "single", tokenizer_dir, shards=2)
    broken = inputs / "part2.jsonl"
    good = broken.read_text()
    broken.write_text(good + "{oops\n")
    with pytest.raises(ValueError, match=r"part2\.jsonl:16: malformed JSON"):
        preprocess(inputs, tmp_path / "p", tokenizer_dir, partitions=3, shards=2)
    assert sorted(p.name for p in (tmp_path / "p.parts").glob("*.done")) == [
        "part00000.done",
        "part00001.done",
    ]
    assert not list(tmp_path.glob("p_shard*"))
    broken.write_text(good)
    with caplog.at_level(logging.INFO, logger="megatron_bliss.data.partitions"):
        preprocess(inputs, tmp_path / "p", tokenizer_dir, partitions=3, shards=2)
    assert caplog.text.count("already finished") == 2
    for k in range(2):
        name = f"shard{k}_text_document"
        assert read_bytes(tmp_path / f"p_{name}") == read_bytes(tmp_path / f"single_{name}")
    manifest = json.loads((tmp_path / "p_shard0_text_document.json").read_text())
    assert len(manifest["inputs"]) == 3
    assert not (tmp_path / "p.parts").exists()


def test_megatron_fixture_readable_by_pool(shared_data):
    prefix = shared_data / "megatron_fixture" / "meg-gpt2-openwebtext_text_document"
    if not prefix.with_suffix(".idx").exists():
        pytest.skip("megatron fixture absent")
    pool = SequencePool(str(prefix), 64)
    assert len(pool) > 0 and pool[0].shape == (65,)
    assert pool.max_token_id() < 60000


def test_more_shards_than_documents_stops_and_writes_nothing(tmp_path, tokenizer_dir, capsys):
    prefix = build_shard(tmp_path / "two_text_document", [[1, 2, 3], [4, 5]])
    with pytest.raises(ValueError, match=r"two_text_document: 2 document\(s\) cannot fill 3"):
        split_indexed(prefix, 3, str(tmp_path / "out" / "s"))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    source = write_jsonl(tmp_path / "two.jsonl", ["one doc", "another doc"])
    for partitions in ("1", "2"):
        code = main(["make-shards", "--input", str(source), str(source), "--num-shards", "3",
                     "--tokenizer", str(tokenizer_dir), "--output-prefix", str(tmp_path / "p" / "s"),
                     "--partitions", partitions, "--no-progress"])  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert code == 2 and "2 document(s) cannot fill 3 shards" in err, err
        assert not list((tmp_path / "p").iterdir())


def test_make_shards_input_and_data_prefix_together_is_refused(tmp_path, capsys):
    code = main(["make-shards", "--input", "a.jsonl", "--data-prefix", "b_text_document",
                 "--num-shards", "2", "--output-prefix", str(tmp_path / "s")])  # fmt: skip
    assert code == 2 and "not both" in capsys.readouterr().err


def test_merge_refuses_datasets_of_different_tokenizers(tmp_path):
    prefixes = []
    for name, digest in (("a", "1" * 64), ("b", "1" * 64), ("c", "2" * 64)):
        prefix = build_shard(tmp_path / f"{name}_text_document", [[1, 2], [3]])
        Path(prefix + ".json").write_text(json.dumps({"tokenizer_hash": digest, "documents": 2}))
        prefixes.append(prefix)
    merge_datasets(prefixes[:2], str(tmp_path / "same"))  # one tokenizer: fine
    with pytest.raises(ValueError, match=r"c_text_document: made with another tokenizer than"):
        merge_datasets(prefixes, str(tmp_path / "mixed"))
    assert not list(tmp_path.glob("mixed*"))


def test_output_prefix_through_a_file_is_one_line(tmp_path):
    prefix = build_shard(tmp_path / "a_text_document", [[1, 2], [3]])
    (tmp_path / "file").write_text("x")
    with pytest.raises(
        ValueError, match=r"file/s: cannot create output folder .*a file is in the way"
    ):
        split_indexed(prefix, 1, str(tmp_path / "file" / "s"))
