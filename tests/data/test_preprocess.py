"""preprocess: formats round-trip, bytes match the reference loop for any worker count, errors."""

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest

from megatron_bliss.cli import main
from tests.data.conftest import (
    documents_of,
    preprocess,
    read_bytes,
    reference_bytes,
    write_jsonl,
)


def outputs_in(folder):
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".idx", ".json"))


def test_jsonl_matches_reference_and_megatron_reads_it(tmp_path, docs, tokenizer, tokenizer_dir):
    source = write_jsonl(tmp_path / "c.jsonl", docs)
    result = preprocess(source, tmp_path / "out" / "c", tokenizer_dir)
    assert read_bytes(tmp_path / "out" / "c_text_document") == reference_bytes(
        tokenizer, docs, tmp_path
    )
    read_back = documents_of(tmp_path / "out" / "c_text_document")
    expected = [tokenizer.encode(t) + [tokenizer.eos_token_id] for t in docs if t]
    assert [list(d) for d in read_back] == expected
    assert result["empty_documents"] == {"text": 1}
    manifest = json.loads((tmp_path / "out" / "c_text_document.json").read_text())
    assert manifest["documents"] == len(docs) - 1 and manifest["dtype"] == "uint16"
    assert manifest["eod_id"] == tokenizer.eos_token_id and len(manifest["tokenizer_hash"]) == 64
    assert manifest["inputs"][0]["sha256"] and manifest["empty_documents"] == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_bytes_identical_for_any_worker_count(tmp_path, docs, tokenizer, tokenizer_dir, workers):
    source = write_jsonl(tmp_path / "c.jsonl", docs)
    preprocess(source, tmp_path / "w", tokenizer_dir, workers=workers, batch_lines=7)
    assert read_bytes(tmp_path / "w_text_document") == reference_bytes(tokenizer, docs, tmp_path)


def write_format(path, docs):
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": docs}), path, row_group_size=13)
    elif name.endswith(".gz"):
        with gzip.open(path, "wt") as handle:
            handle.writelines(json.dumps({"text": t}) + "\n" for t in docs)
    elif name.endswith(".zst"):
        import zstandard

        raw = "".join(json.dumps({"text": t}) + "\n" for t in docs).encode()
        path.write_bytes(zstandard.ZstdCompressor().compress(raw))
    else:
        write_jsonl(path, docs)


@pytest.mark.parametrize(
    "name", ["a.jsonl", "a.json", "a.jsonl.gz", "a.json.zst", "a.parquet", "dir", "glob"]
)
def test_every_input_format_round_trips(tmp_path, docs, tokenizer, tokenizer_dir, name):
    if name in ("dir", "glob"):
        (tmp_path / "in" / "sub").mkdir(parents=True)
        write_format(tmp_path / "in" / "a.jsonl.gz", docs[:30])
        write_format(tmp_path / "in" / "sub" / "b.jsonl", docs[30:])
        (tmp_path / "in" / "notes.txt").write_text("ignored")
        source = tmp_path / "in" if name == "dir" else f"{tmp_path}/in/**/*.json*"
    else:
        source = tmp_path / name
        write_format(source, docs)
    preprocess(source, tmp_path / "f", tokenizer_dir, workers=2, batch_lines=16)
    assert read_bytes(tmp_path / "f_text_document") == reference_bytes(tokenizer, docs, tmp_path)


def test_several_json_keys(tmp_path, tokenizer, tokenizer_dir):
    rows = [{"text": "first document", "title": "one"}, {"text": "second", "title": "two"}]
    source = tmp_path / "k.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    preprocess(source, tmp_path / "k", tokenizer_dir, json_keys=["text", "title"])
    titles = [list(d) for d in documents_of(tmp_path / "k_title_document")]
    assert titles == [tokenizer.encode(r["title"]) + [tokenizer.eos_token_id] for r in rows]


BAD_INPUTS = {
    "malformed": ('{"text": "fine"}\n{"text": "broken\n', r"bad\.jsonl:2: malformed JSON"),
    "missing_key": ('{"text": "fine"}\n{"body": "x"}\n', r"bad\.jsonl:2: missing key 'text'"),
    "not_string": ('{"text": 3}\n', r"bad\.jsonl:1: key 'text' is not a string"),
    "json_array": ('[{"text": "a"}]\n', r"bad\.jsonl:1: expected a JSON object, got an array"),
    "pretty_printed": ('{\n  "text": "a"\n}\n', r"bad\.jsonl:1: malformed JSON .*one whole object"),
    "null_text": ('{"text": null}\n', r"bad\.jsonl:1: key 'text' is null"),
    "not_object": ("[1, 2]\n", r"bad\.jsonl:1: expected a JSON object"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_line_stops_with_one_line_and_leaves_nothing(tmp_path, tokenizer_dir, case, docs):
    content, pattern = BAD_INPUTS[case]
    good = "".join(json.dumps({"text": t}) + "\n" for t in docs[:40])
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.jsonl").write_text(content)
    (tmp_path / "in" / "a_good.jsonl").write_text(good)  # sorted first: the error comes later
    with pytest.raises(ValueError, match=pattern) as error:
        preprocess(tmp_path / "in", tmp_path / "out" / "c", tokenizer_dir, workers=2, batch_lines=4)
    assert "\n" not in str(error.value)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_bom_crlf_and_blank_lines_read_like_plain_lines(
    tmp_path, docs, tokenizer, tokenizer_dir, suffix
):
    lines = "\r\n\r\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in docs)
    data = ("\ufeff" + lines + "\r\n").encode("utf-8")
    source = tmp_path / f"bom{suffix}"
    source.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    preprocess(source, tmp_path / "b", tokenizer_dir)
    assert read_bytes(tmp_path / "b_text_document") == reference_bytes(tokenizer, docs, tmp_path)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_invalid_utf8_names_its_own_line(tmp_path, tokenizer_dir, suffix):
    data = b'{"text": "fine"}\n' * 3 + b'{"text": "bad \xff byte"}\n' + b'{"text": "x"}\n' * 3
    source = tmp_path / f"u{suffix}"
    source.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    with pytest.raises(ValueError, match=rf"u{suffix}:4: not valid UTF-8 \(byte 0xff at byte 15"):
        preprocess(source, tmp_path / "out" / "u", tokenizer_dir)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_lone_surrogate_escape_is_a_bad_line_not_a_crash(tmp_path, tokenizer, tokenizer_dir):
    source = tmp_path / "s.jsonl"
    source.write_text('{"text": "fine"}\n{"text": "a\\ud800b"}\n{"text": "caf\u00e9"}\n')
    with pytest.raises(ValueError, match=r"s\.jsonl:2: key 'text' holds an unpaired surrogate"):
        preprocess(source, tmp_path / "s", tokenizer_dir, workers=2)
    result = preprocess(source, tmp_path / "k", tokenizer_dir, skip_bad_lines=True)
    assert result["bad_lines"] == 1 and len(documents_of(tmp_path / "k_text_document")) == 2


@pytest.mark.parametrize("partitions", [1, 2])
def test_input_without_documents_stops_and_writes_nothing(tmp_path, tokenizer_dir, partitions):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text("")
    (tmp_path / "in" / "b.jsonl").write_text('\n{"text": ""}\n')
    with pytest.raises(ValueError, match=r"a\.jsonl \(and 1 more\): no documents") as error:
        preprocess(tmp_path / "in", tmp_path / "out" / "e", tokenizer_dir, partitions=partitions)
    assert "\n" not in str(error.value)
    assert list((tmp_path / "out").iterdir()) == []


def test_output_prefix_through_a_file_stops_before_tokenising(tmp_path, docs, tokenizer_dir):
    source = write_jsonl(tmp_path / "c.jsonl", docs)
    with pytest.raises(ValueError, match=r"c\.jsonl/x: cannot create output folder"):
        preprocess(source, source / "x", tokenizer_dir)


def test_an_empty_file_among_others_is_fine(tmp_path, docs, tokenizer, tokenizer_dir):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text("")
    write_jsonl(tmp_path / "in" / "b.jsonl", docs)
    preprocess(tmp_path / "in", tmp_path / "m", tokenizer_dir, partitions=2)
    assert read_bytes(tmp_path / "m_text_document") == reference_bytes(tokenizer, docs, tmp_path)


def test_skip_bad_lines_counts_them(tmp_path, tokenizer, tokenizer_dir):
    source = tmp_path / "s.jsonl"
    source.write_text('{"text": "kept"}\nnot json\n{"other": 1}\n{"text": ""}\n{"text": "also"}\n')
    result = preprocess(source, tmp_path / "s", tokenizer_dir, skip_bad_lines=True)
    assert result["bad_lines"] == 2 and result["empty_documents"]["text"] == 1
    assert len(documents_of(tmp_path / "s_text_document")) == 2
    assert json.loads((tmp_path / "s_text_document.json").read_text())["bad_lines"] == 2


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_corrupt_archive_is_one_line(tmp_path, docs, tokenizer_dir, suffix):
    source = tmp_path / f"c{suffix}"
    write_format(source, docs * 5)
    data = source.read_bytes()
    source.write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(ValueError, match=rf"c{suffix}:\d+: cannot read") as error:
        preprocess(source, tmp_path / "out" / "c", tokenizer_dir)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_unreadable_tokenizer_via_cli(tmp_path, docs, capsys):
    source = write_jsonl(tmp_path / "c.jsonl", docs)
    broken = tmp_path / "tok.json"
    broken.write_text("{not json")
    code = main(["preprocess", "--input", str(source), "--output-prefix", str(tmp_path / "o"),
                 "--tokenizer", str(broken), "--no-progress"])  # fmt: skip
    message = capsys.readouterr().err.strip()
    assert code == 2 and len(message.splitlines()) == 1
    assert "tok.json: cannot load tokenizer" in message
    assert not list(tmp_path.glob("o_*"))


def test_interrupted_run_leaves_no_final_files(tmp_path, docs, tokenizer_dir, monkeypatch):
    from megatron_bliss.data import tokenize_files as module

    calls = {"n": 0}
    original = module.ShardWriters.add

    def interrupted(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(module.ShardWriters, "add", interrupted)
    source = write_jsonl(tmp_path / "c.jsonl", docs)
    with pytest.raises(KeyboardInterrupt):
        preprocess(source, tmp_path / "out" / "c", tokenizer_dir, batch_lines=5)
    assert list((tmp_path / "out").iterdir()) == []


MEMORY_SCRIPT = """
import sys, tracemalloc
from megatron_bliss.data.tokenizer import TokenizerSpec, load_tokenizer
from megatron_bliss.data.preprocess import PreprocessOptions, run_preprocess
tokenizer = sys.argv[1]
load_tokenizer(tokenizer)  # imports done before measuring
tracemalloc.start()
for source in sys.argv[2:]:
    tracemalloc.reset_peak()
    run_preprocess(PreprocessOptions([source], source + ".out", TokenizerSpec(tokenizer),
                                     append_eod=True, progress=False, batch_lines=256))
    print(tracemalloc.get_traced_memory()[1])
"""


def test_memory_stays_flat_as_input_grows(tmp_path, docs, tokenizer_dir):
    """Peak traced memory (Python objects and numpy buffers, which is where a run that held its
    input or its token arrays would grow) for an 8x larger input stays within a small margin."""
    short = [text[:200] for text in docs]
    sources = [str(write_jsonl(tmp_path / f"m{n}.jsonl", short * n)) for n in (10, 80)]
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(tokenizer_dir), *sources],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    small, large = (int(line) for line in out.stdout.split()[-2:])
    assert small > 0 and large < small * 1.25 + 100_000, (small, large)


def test_real_c4_with_pythia_tokenizer(shared_data, tmp_path):
    """The issue's check: megatron-core reads back exactly the tokenizer's own output."""
    from megatron_bliss.data.tokenizer import load_tokenizer

    source = shared_data / "c4" / "c4-en-train.00000-of-01024.first1000.jsonl"
    spec = shared_data / "tokenizers" / "gpt-neox-20b_tokenizer.json"
    if not source.exists() or not spec.exists():
        pytest.skip("C4 sample or Pythia tokenizer absent")
    from megatron_bliss.data.tokenizer import TokenizerSpec

    preprocess(source, tmp_path / "c4", None, spec=TokenizerSpec(str(spec)), workers=2)
    tokenizer = load_tokenizer(str(spec))
    texts = [json.loads(line)["text"] for line in source.read_text().splitlines()][:300]
    read_back = documents_of(tmp_path / "c4_text_document")
    for text, document in zip(texts, read_back):
        assert list(document) == tokenizer.encode(text) + [0]
    assert np.asarray(read_back[0]).dtype == np.uint16


@pytest.mark.parametrize("setting", ["workers", "shards", "partitions", "batch_lines"])
def test_counts_below_one_are_refused(tmp_path, docs, tokenizer_dir, setting):
    source = write_jsonl(tmp_path / "c.jsonl", docs[:3])
    with pytest.raises(ValueError, match="must be at least 1"):
        preprocess(source, tmp_path / "c", tokenizer_dir, **{setting: 0})


def test_rerun_with_outputs_in_the_input_folder_skips_their_manifests(
    tmp_path, docs, tokenizer, tokenizer_dir
):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "c.jsonl", docs)
    for _ in range(2):  # the second run finds c_text_document.json beside its .idx
        preprocess(folder, folder / "c", tokenizer_dir)
        preprocess(str(folder / "*.json*"), folder / "g", tokenizer_dir)
    expected = reference_bytes(tokenizer, docs, tmp_path)
    assert read_bytes(folder / "c_text_document") == expected
    assert read_bytes(folder / "g_text_document") == expected
