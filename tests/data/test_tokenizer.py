"""load_tokenizer for every accepted spec, the eod rules and the dtype rule of docs/formats.md."""

import json
from pathlib import Path

import numpy as np
import pytest

from megatron_bliss.data.tokenizer import (
    DocumentEncoder,
    TokenizerSpec,
    load_tokenizer,
    resolve_eod_id,
    token_dtype,
)
from tests.data.conftest import documents_of, preprocess, write_jsonl


def test_directory_and_json_file_agree(tokenizer_dir, corpus_texts):
    from_dir = load_tokenizer(str(tokenizer_dir))
    from_json = load_tokenizer(str(tokenizer_dir / "tokenizer.json"))
    assert from_json.eos_token == "<|endoftext|>"  # adopted from the vocabulary
    for text in corpus_texts[:10]:
        assert from_dir.encode(text) == from_json.encode(text)
    encoder = DocumentEncoder(from_json, append_eod=True, eod_id=0, bos_id=None)
    batch = encoder.encode_batch(corpus_texts[:10])
    assert batch == [from_json.encode(t, add_special_tokens=False) + [0] for t in corpus_texts[:10]]


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory, corpus_texts):
    import sentencepiece

    folder = tmp_path_factory.mktemp("spm")
    (folder / "corpus.txt").write_text("\n".join(t.replace("\n", " ") for t in corpus_texts))
    sentencepiece.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"), model_prefix=str(folder / "sp"), vocab_size=400,
        model_type="bpe", byte_fallback=True, minloglevel=2,
    )  # fmt: skip
    return folder / "sp.model"


def test_sentencepiece_model(sentencepiece_model, corpus_texts, tmp_path):
    import sentencepiece

    tokenizer = load_tokenizer(str(sentencepiece_model))
    reference = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model))
    for text in ["Hello world, the assert statement.", *corpus_texts[:5]]:
        text = text.replace("\n", " ")
        assert tokenizer.encode(text, add_special_tokens=False) == reference.encode(text)
    assert resolve_eod_id(tokenizer) == reference.eos_id()
    source = write_jsonl(tmp_path / "c.jsonl", ["plain text here", "more"])
    preprocess(source, tmp_path / "sp", None, spec=TokenizerSpec(str(sentencepiece_model)),
               add_bos=True)  # fmt: skip
    first = list(documents_of(tmp_path / "sp_text_document")[0])
    assert first == [reference.bos_id(), *reference.encode("plain text here"), reference.eos_id()]


@pytest.fixture(scope="module")
def gpt2_files(tmp_path_factory, corpus_texts):
    from tokenizers import ByteLevelBPETokenizer

    trained = ByteLevelBPETokenizer()
    trained.train_from_iterator(corpus_texts, vocab_size=400, special_tokens=["<|endoftext|>"])
    folder = tmp_path_factory.mktemp("gpt2")
    vocab, merges = trained.save_model(str(folder))
    return vocab, merges, trained


def test_gpt2_bpe_with_megatron_flags(gpt2_files, tmp_path):
    from megatron_bliss.cli import main

    vocab, merges, trained = gpt2_files
    source = write_jsonl(tmp_path / "c.jsonl", ["The quick brown fox.", "Another document"])
    code = main(["preprocess", "--input", str(source), "--output-prefix", str(tmp_path / "g"),
                 "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", vocab,
                 "--merge-file", merges, "--append-eod", "--no-progress"])  # fmt: skip
    assert code == 0
    eod = json.loads(Path(vocab).read_text())["<|endoftext|>"]
    documents = [list(d) for d in documents_of(tmp_path / "g_text_document")]
    assert documents[0] == trained.encode("The quick brown fox.").ids + [eod]


def test_huggingface_tokenizer_type(tokenizer_dir, tokenizer, tmp_path):
    from megatron_bliss.cli import main

    source = write_jsonl(tmp_path / "c.jsonl", ["abc def"])
    code = main(["preprocess", "--input", str(source), "--output-prefix", str(tmp_path / "h"),
                 "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
                 str(tokenizer_dir), "--no-progress"])  # fmt: skip
    assert code == 0
    assert list(documents_of(tmp_path / "h_text_document")[0]) == tokenizer.encode("abc def")


class FakeTokenizer:
    def __init__(self, vocab, eos=None, size=None):
        self.vocab, self.eos_token_id, self.size = vocab, eos, size or len(vocab)

    def get_vocab(self):
        return self.vocab

    def __len__(self):
        return self.size


def test_eod_resolution_order():
    assert resolve_eod_id(FakeTokenizer({"a": 0, "</s>": 1}, eos=7, size=10)) == 7
    assert resolve_eod_id(FakeTokenizer({"</s>": 1, "<|endoftext|>": 2})) == 2
    assert resolve_eod_id(FakeTokenizer({"a": 0, "</s>": 1})) == 1
    assert resolve_eod_id(FakeTokenizer({"a": 0, "<sep>": 1}), override="<sep>") == 1
    assert resolve_eod_id(FakeTokenizer({"a": 0, "b": 1}), override="1") == 1
    with pytest.raises(ValueError, match="--eod-token"):
        resolve_eod_id(FakeTokenizer({"a": 0}))
    with pytest.raises(ValueError, match="not a token"):
        resolve_eod_id(FakeTokenizer({"a": 0}), override="<x>")


def test_dtype_rule():
    assert token_dtype(FakeTokenizer({}, size=65499)) == np.uint16
    assert token_dtype(FakeTokenizer({}, size=65500)) == np.int32


@pytest.mark.parametrize("spec", ["missing_dir_or_hub_name_xyz", "tok.txt", "tok.model"])
def test_unloadable_tokenizer_is_one_line(tmp_path, spec):
    path = tmp_path / spec
    if spec != "missing_dir_or_hub_name_xyz":
        path.write_text("garbage")
    with pytest.raises((ValueError, OSError)) as error:
        load_tokenizer(str(path))
    assert "\n" not in str(error.value) and spec in str(error.value)


def test_missing_tokenizer_file_is_named_not_fetched(tmp_path):
    from megatron_bliss.data.tokenizer import load_tokenizer

    with pytest.raises(FileNotFoundError, match=r"nothere\.json: tokenizer not found"):
        load_tokenizer(str(tmp_path / "nothere.json"))


def test_no_tokenizer_given_is_one_plain_line(tmp_path, capsys):
    from megatron_bliss.cli import main

    source = tmp_path / "c.jsonl"
    source.write_text('{"text": "a"}\n')
    code = main(["preprocess", "--input", str(source), "--output-prefix", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.endswith(
        "error: no tokenizer given (--tokenizer, or --tokenizer-model with --tokenizer-type)"
    )
