"""Tokenizer training (BPE, sentencepiece) and the demo's corpus/tokenizer resolution."""

import json

from megatron_bliss.cli import main
from megatron_bliss.data import sources
from megatron_bliss.data.tokenizer import load_tokenizer, resolve_eod_id
from megatron_bliss.data.tokenizer_training import train_bpe_tokenizer


def test_train_bpe_tokenizer_ids_and_auto_load(tmp_path, corpus_texts):
    from transformers import AutoTokenizer

    tokenizer = train_bpe_tokenizer(iter(corpus_texts[:40]), 300)
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|padding|>"]) == [0, 1]
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.eos_token_id == 0 and loaded.pad_token_id == 1 and len(loaded) == 300
    assert loaded.encode("The assert statement") == tokenizer.encode("The assert statement")


def test_train_tokenizer_cli_both_kinds(tmp_path, corpus_jsonl):
    for kind, eos in (("bpe", "<|endoftext|>"), ("sentencepiece", "</s>")):
        out = tmp_path / kind
        code = main(["train-tokenizer", "--input", str(corpus_jsonl), "--vocab-size", "400",
                     "--output", str(out), "--type", kind])  # fmt: skip
        assert code == 0
        tokenizer = load_tokenizer(str(out))
        assert tokenizer.eos_token == eos and resolve_eod_id(tokenizer) == tokenizer.eos_token_id
        assert tokenizer.decode(tokenizer.encode("print the value", add_special_tokens=False))


def test_resolution_falls_back_to_builtin_and_trained(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "shared_data_dir", lambda: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    files, label = sources.resolve_corpus(None, tmp_path)
    assert label == sources.SMOKE_LABEL and files[0].exists()
    first = json.loads(files[0].read_text().splitlines()[0])
    assert first["text"]
    spec, label = sources.resolve_tokenizer(None, files, tmp_path, vocab_size=300)
    assert "trained" in label and len(load_tokenizer(spec)) == 300


def test_resolution_prefers_given_then_shared(tmp_path, corpus_jsonl, shared_data):
    files, label = sources.resolve_corpus(str(corpus_jsonl), tmp_path)
    assert files == [corpus_jsonl] and "given" in label
    files, label = sources.resolve_corpus(None, tmp_path)
    assert files[0].name == sources.C4_SAMPLE_FILES[0] and "C4" in label
    spec, label = sources.resolve_tokenizer(None, files, tmp_path)
    assert spec.endswith("gpt-neox-20b_tokenizer.json")
