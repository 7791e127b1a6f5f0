"""Target set: the three formats' loss masks, and one-line errors naming the file and row."""

from __future__ import annotations

import json

import pytest

from megatron_bliss.data.target_set import IGNORE_INDEX, TargetSet


def write_rows(path, rows, prefix=""):
    path.write_text(prefix + "".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def scored_ids(example):
    return [int(i) for i in example.labels if i != IGNORE_INDEX]


def test_last_word_and_prompt_continuation_score_the_same_tokens(tmp_path, tokenizer):
    text = "the cat sat on the mat"
    last = TargetSet.from_jsonl(write_rows(tmp_path / "l.jsonl", [{"text": text}]), tokenizer,
                                "last_word")  # fmt: skip
    pairs = [{"prompt": "the cat sat on the", "continuation": " mat"}]
    prompt = TargetSet.from_jsonl(write_rows(tmp_path / "p.jsonl", pairs), tokenizer,
                                  "prompt_continuation")  # fmt: skip
    assert scored_ids(last.examples[0]) == tokenizer.encode(" mat", add_special_tokens=False)
    assert scored_ids(last.examples[0]) == scored_ids(prompt.examples[0])


def test_byte_order_mark_and_crlf_are_read(tmp_path, tokenizer):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"text": "a b c"}\r\n\r\n{"text": "d e"}\r\n')
    assert len(TargetSet.from_jsonl(path, tokenizer, "documents")) == 2


BAD_ROWS = {
    "null": ({"text": None}, "documents", r"t\.jsonl:1: field 'text' is null, not a string"),
    "number": ({"text": 7}, "last_word", r"t\.jsonl:1: field 'text' is a number, not a string"),
    "wrong_keys": ({"text": "a b"}, "prompt_continuation",
                   r"t\.jsonl:1: missing field 'prompt' \(--target-format prompt_continuation"),
    "no_text": ({"prompt": "a", "continuation": "b"}, "last_word",
                r"t\.jsonl:1: missing field 'text' \(--target-format last_word reads 'text'\)"),
    "surrogate": ({"text": "a \ud800 b"}, "documents", r"t\.jsonl:1: field 'text' holds an unpaired surrogate"),
    "not_object": ("just a string with text in it", "documents", r"t\.jsonl:1: expected a JSON object"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_is_one_line_naming_file_and_row(tmp_path, tokenizer, case):
    row, fmt, pattern = BAD_ROWS[case]
    with pytest.raises(ValueError, match=pattern) as error:
        TargetSet.from_jsonl(write_rows(tmp_path / "t.jsonl", [row]), tokenizer, fmt)
    assert "\n" not in str(error.value)
