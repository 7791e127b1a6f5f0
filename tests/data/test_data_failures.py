"""Damaged or mismatched data stops with one line naming the file: a truncated .idx (no second
traceback from megatron-core's __del__) or .bin, a shard made with another tokenizer than
pretrain's; preprocess skips undecodable lines with --skip-bad-lines, clears temporaries of
killed runs and says when it replaces a finished dataset."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from megatron_bliss.cli import main
from tests.conftest import build_shard
from tests.data.conftest import preprocess, write_jsonl
from tests.engine.conftest import tiny_overrides


@pytest.fixture(scope="module")
def shard_with_manifest(tmp_path_factory, docs, tokenizer_dir):
    folder = tmp_path_factory.mktemp("manifest_shard")
    preprocess(write_jsonl(folder / "c.jsonl", docs), folder / "c", tokenizer_dir)
    return str(folder / "c_text_document")


@pytest.fixture(scope="module")
def other_tokenizer_dir(tmp_path_factory, corpus_texts):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tokenizer.train_from_iterator(corpus_texts[:20], trainer)
    path = tmp_path_factory.mktemp("other_tokenizer")
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")
    wrapped.save_pretrained(path)
    return path


def test_truncated_idx_is_one_line_naming_it(tmp_path, monkeypatch):
    import gc

    from megatron_bliss.data.pool import SequencePool

    prefix = build_shard(tmp_path / "cut_text_document", [list(range(40))] * 20)
    index = tmp_path / "cut_text_document.idx"
    index.write_bytes(index.read_bytes()[:100])
    ignored = []  # what Python prints as "Exception ignored in ...__del__"
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)
    with pytest.raises(ValueError) as stopped:
        SequencePool(prefix, 8)
    gc.collect()
    assert str(stopped.value).startswith(f"{index}: truncated index (100 bytes")
    assert ignored == []


def test_truncated_bin_is_named(tmp_path):
    from megatron_bliss.data.pool import SequencePool

    prefix = build_shard(tmp_path / "cut_text_document", [list(range(40))] * 20)
    data = tmp_path / "cut_text_document.bin"
    data.write_bytes(data.read_bytes()[:500])
    with pytest.raises(ValueError, match=r"cut_text_document\.bin: truncated \(500 bytes"):
        SequencePool(prefix, 8)


def test_pretrain_refuses_a_tokenizer_the_shard_was_not_made_with(
    shard_with_manifest, tokenizer_dir, other_tokenizer_dir, tmp_path, capsys
):
    from megatron_bliss.data.tokenizer import check_dataset_tokenizer, load_tokenizer

    run_dir = tmp_path / "run"
    overrides = tiny_overrides(shard_with_manifest, other_tokenizer_dir, run_dir)
    assert main(["pretrain", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{shard_with_manifest}.json: {shard_with_manifest} was tokenized with" in err
    assert f"not with data.tokenizer={other_tokenizer_dir}" in err
    assert not (run_dir / "tokenizer").exists()  # the wrong tokenizer is not kept for export
    # The same tokenizer named another way (its JSON file) passes.
    same = load_tokenizer(str(tokenizer_dir / "tokenizer.json"))
    check_dataset_tokenizer(shard_with_manifest, same, "tokenizer.json")


def test_skip_bad_lines_skips_invalid_utf8(tmp_path, tokenizer_dir):
    data = b'{"text": "fine"}\n' * 3 + b'{"text": "bad \xff byte"}\n' + b'{"text": "x"}\n' * 3
    source = tmp_path / "u.jsonl"
    source.write_bytes(data)
    result = preprocess(source, tmp_path / "u", tokenizer_dir, skip_bad_lines=True)
    documents, _ = result["counts"][f"{tmp_path / 'u'}_text_document"]
    assert result["bad_lines"] == 1 and documents == 6


def test_stale_temporaries_are_removed_and_replacing_is_logged(
    tmp_path, docs, tokenizer_dir, caplog
):
    source = write_jsonl(tmp_path / "c.jsonl", docs[:10])
    final = tmp_path / "c_text_document"
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # its PID names files no process will finish
    stale = [tmp_path / f"c_text_document.tmp{ended.pid}{ext}" for ext in (".bin", ".idx")]
    running = tmp_path / f"c_text_document.tmp{os.getppid()}.bin"  # a live process's
    for path in [*stale, running]:
        path.write_bytes(b"partial")
    with caplog.at_level(logging.INFO, logger="megatron_bliss"):
        preprocess(source, tmp_path / "c", tokenizer_dir)
    assert not any(path.exists() for path in stale) and running.exists()
    assert f"removing {stale[0]}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="megatron_bliss"):
        preprocess(source, tmp_path / "c", tokenizer_dir)
    assert f"{final}.bin/.idx exist: this run replaces them" in caplog.text
