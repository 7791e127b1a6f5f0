"""train-tokenizer on odd corpora: long documents reach sentencepiece, bad input is one line and
leaves no output folder."""

from __future__ import annotations

import json

import pytest

from megatron_bliss.cli import main
from megatron_bliss.data.tokenizer_training import corpus_texts, train_tokenizer


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def train_cli(args, capsys) -> tuple[int, str]:
    code = main(["train-tokenizer", *args])
    return code, capsys.readouterr().err.strip()


def test_long_documents_are_not_dropped_by_sentencepiece(tmp_path):
    """A word that appears only inside one >4 KB document must still be learnt."""
    long_doc = " ".join(["zyxwvutsrq"] * 600)  # 6.6 KB, one paragraph per line below
    rows = [{"text": "short text here"}, {"text": long_doc.replace(" zyx", "\nzyx", 300)}]
    tokenizer = train_tokenizer([write_rows(tmp_path / "c.jsonl", rows)], 300,
                                tmp_path / "sp", kind="sentencepiece")  # fmt: skip
    pieces = tokenizer.convert_ids_to_tokens(
        tokenizer.encode("zyxwvutsrq", add_special_tokens=False)
    )
    assert len(pieces) <= 2, pieces


def test_several_json_keys_are_all_trained_on(tmp_path):
    source = write_rows(
        tmp_path / "k.jsonl", [{"text": "a", "title": "b"}, {"text": "", "title": "c"}]
    )
    assert list(corpus_texts([source], ["text", "title"])) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("rows", "kind", "vocab", "message"),
    [([], "bpe", "300", "e.jsonl: no documents to train a tokenizer on"),
     ([{"text": ""}], "sentencepiece", "300", "e.jsonl: no documents to train a tokenizer on"),
     ([{"text": "ok"}, {"text": None}], "bpe", "300", "e.jsonl:2: key 'text' is null"),
     ([{"text": "ok"}, {"body": "x"}], "bpe", "300", "e.jsonl:2: missing key 'text'"),
     ([{"text": "some words"}], "bpe", "10", "--vocab-size 10: a byte-level BPE needs at least 258"),
     ([{"text": "some words"}], "sentencepiece", "100000", "--vocab-size 100000: sentencepiece: ")],
)  # fmt: skip
def test_bad_corpus_or_size_is_one_line_and_no_output(tmp_path, capsys, rows, kind, vocab, message):
    source = write_rows(tmp_path / "e.jsonl", rows)
    out = tmp_path / "out" / "tok"
    code, err = train_cli(["--input", source, "--vocab-size", vocab, "--output", str(out),
                           "--type", kind], capsys)  # fmt: skip
    assert code == 2 and len(err.splitlines()) == 1 and message in err
    assert not out.exists() and not (tmp_path / "out" / ".tok.tmp").exists()


def test_output_that_is_a_file_or_other_folder_is_refused(tmp_path, capsys):
    source = write_rows(tmp_path / "c.jsonl", [{"text": "some words"}])
    (tmp_path / "file").write_text("keep")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("{}")
    for target, message in (("file", "is not a directory"), ("run", "holds no tokenizer")):
        code, err = train_cli(["--input", source, "--vocab-size", "300",
                               "--output", str(tmp_path / target)], capsys)  # fmt: skip
        assert code == 2 and message in err
    assert (tmp_path / "file").read_text() == "keep" and (
        tmp_path / "run" / "metrics.jsonl"
    ).exists()


def test_retraining_replaces_an_earlier_tokenizer(tmp_path, capsys):
    source = write_rows(tmp_path / "c.jsonl", [{"text": "some words and more words"}])
    for vocab in ("300", "270"):
        code, _ = train_cli(["--input", source, "--vocab-size", vocab,
                             "--output", str(tmp_path / "tok")], capsys)  # fmt: skip
        assert code == 0
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(tmp_path / "tok")) <= 270
