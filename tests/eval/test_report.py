"""The report command on synthetic pipeline run directories, TensorBoard logging and the
13-gram contamination index."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from megatron_bliss.eval import contamination


def _links(report_text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report_text)


def test_report_has_every_plot_and_table(synthetic_runs, tmp_path):
    from megatron_bliss.cli import main

    assert main(["report", *map(str, synthetic_runs)]) == 0
    output = synthetic_runs[0].parent  # the runs' common parent
    text = (output / "report.md").read_text()
    links = _links(text)
    expected = {"plots/loss.png", "plots/accuracy.png", "plots/speedup.png"}
    expected |= {"plots/scores_bliss.png", "plots/scores_random.png"}
    assert set(links) == expected
    for link in links:
        assert (output / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for heading in ("## Runs", "## Loss vs tokens", "## Zero-shot accuracy per round"):
        assert heading in text
    assert "| bliss | bliss | 2 | target.jsonl (documents)" in text
    # The average covers the 8 tasks evaluated everywhere; LogiQA (never evaluated) is not one.
    average = re.search(r"Average = the (\d+) of the paper's 9 tasks [^(]*\(([^)]*)\)", text)
    assert average is not None and int(average.group(1)) == 8
    assert "logiqa" not in average.group(2).split(", ") and "| average (8) |" in text
    # LAMBADA marked as the target set; speedup of bliss against random is a number above 1.
    assert re.search(r"\| 0\.\d{4} †", text)
    speedup_row = next(
        line for line in text.splitlines() if line.startswith("| bliss |") and "e+" in line
    )
    token_speedup = float(speedup_row.split("|")[3])
    assert token_speedup > 1.0
    # Highest/lowest tables hold decoded text, and the kept flag matches the selection.
    assert text.count("| highest |") == 2 * 2 * 5 and text.count("| lowest |") == 2 * 2 * 5
    assert "| highest | " in text and "| yes |" in text
    # Contamination: the target set is drawn from the pool's own documents; piqa phrases too.
    target_rows = [
        line for line in text.splitlines() if line.startswith("| target set (target.jsonl)")
    ]
    assert len(target_rows) == 2 and all("| 100.0% |" in row for row in target_rows)
    assert any(line.startswith("| eval: piqa | 6 |") for line in text.splitlines())
    assert "Missing or unreadable" not in text


def test_report_degrades_when_pieces_are_missing(synthetic_runs, tmp_path):
    from megatron_bliss.eval.report import write_report

    bliss = synthetic_runs[0]
    (bliss / "round_2" / "eval.json").unlink()
    (bliss / "round_1" / "scores.npy").write_bytes(b"not numpy")
    pipeline = json.loads((bliss / "pipeline.json").read_text())
    del pipeline["tokenizer"]
    (bliss / "pipeline.json").write_text(json.dumps(pipeline))
    report = write_report([bliss], output=tmp_path / "out")
    text = report.read_text()
    assert "`eval.json` missing in `round_2/`" in text
    assert "scores.npy" in text and "unreadable" in text
    assert "no `tokenizer` in pipeline.json" in text
    assert "no run with method `random`" in text
    for link in _links(text):
        assert (report.parent / link).is_file()


def test_log_eval_metrics_next_to_training(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from megatron_bliss.eval.tensorboard import log_eval_metrics

    results = {
        "piqa": {
            "acc": 0.6,
            "acc_stderr": 0.1,
            "acc_norm": 0.625,
            "split": "validation",
            "num_docs": 8,
        },
        "c4_ppl": {"word_perplexity": 321.0, "split": "held-out", "num_docs": 4},
    }
    log_eval_metrics(tmp_path, 7, results)
    log_eval_metrics(tmp_path, 14, {"piqa": {"acc": 0.7, "acc_norm": 0.75, "num_docs": 8}})
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"eval/piqa/acc", "eval/piqa/acc_norm", "eval/c4_ppl/word_perplexity"} <= tags
    assert "eval/piqa/acc_stderr" not in tags and "eval/piqa/num_docs" not in tags
    points = [(e.step, round(e.value, 4)) for e in events.Scalars("eval/piqa/acc_norm")]
    assert points == [(7, 0.625), (14, 0.75)]


def test_ngram_contamination_is_exact_on_word_13_grams():
    source = " ".join(f"w{i}" for i in range(40))
    index = contamination.ngram_index([source, "unrelated short text"])
    shared_13 = " ".join(f"W{i}" for i in range(5, 18))  # 13 words, upper case
    shared_12 = " ".join(f"w{i}" for i in range(5, 17))
    shifted = " ".join(f"w{i}" for i in range(5, 17)) + " w99"
    docs = [shared_13, shared_12, shifted, "prefix words " + shared_13.lower() + " suffix"]
    assert contamination.contaminated_share(docs, index) == 0.5
    assert contamination.contaminated_share([], index) is None
    assert len(contamination.ngram_hashes(source)) == 40 - 13 + 1
    assert len(np.unique(contamination.ngram_hashes(source))) == 28
    row = {"question": "q", "choices": {"text": ["a", "b"]}, "gold": 1}
    assert contamination.document_text(row) == "q a b"


@pytest.mark.parametrize("kind", ["missing", "file", "empty_dir"])
def test_report_on_something_that_is_not_a_run_is_one_line(tmp_path, capsys, kind):
    from megatron_bliss.cli import main

    target = tmp_path / "runs"
    if kind == "file":
        target.write_text("x")
    elif kind == "empty_dir":
        target.mkdir()
    assert main(["report", str(target), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    expected = {"missing": "run directory not found", "file": "a file, not a run directory",
                "empty_dir": "no metrics.jsonl (not a pretrain run directory)"}  # fmt: skip
    assert len(err.splitlines()) == 1 and str(target) in err and expected[kind] in err
    assert not (tmp_path / "out").exists()


def test_report_output_through_a_file_is_one_line(synthetic_runs, tmp_path, capsys):
    from megatron_bliss.cli import main

    (tmp_path / "file").write_text("x")
    runs = [str(path) for path in synthetic_runs]
    assert main(["report", *runs, "--output", str(tmp_path / "file")]) == 2
    assert "--output folder is under the file" in capsys.readouterr().err


def test_report_on_a_pretrain_run_directory(tmp_path, capsys):
    from megatron_bliss.cli import main

    run_dir = tmp_path / "pretrain_run"
    run_dir.mkdir()
    records = [
        {"step": s, "loss": 6.0 - 0.1 * s, "lr": 1e-3, "consumed_tokens": 256 * s}
        for s in range(1, 9)
    ] + [{"step": 8, "val_loss": 5.5}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["report", str(run_dir)]) == 0
    report = (run_dir / "report.md").read_text()
    assert report.startswith("# Training report: pretrain (pretrain_run)")
    assert "| pretrain_run | pretrain | 0 |" in report and "Missing" not in report
    assert "| pretrain (pretrain_run) | 5.2000 | 5.5000 | 2,048 |" in report
    assert "Selection scores" not in report
    for link in _links(report):
        assert (run_dir / link).is_file(), link


def test_report_decodes_with_any_tokenizer_the_project_loads(tmp_path, corpus_texts):
    """A LLaMA run names a sentencepiece ``.model``: the report loads it like every command."""
    import sentencepiece

    from megatron_bliss.eval.report import load_tokenizer
    from megatron_bliss.eval.run_data import RunData

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(corpus_texts[:80]))
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=300, model_type="bpe",
        minloglevel=2,
    )  # fmt: skip
    run = RunData(tmp_path, "run", "bliss", {"tokenizer": str(tmp_path / "sp.model")}, [])
    tokenizer = load_tokenizer(run)
    assert tokenizer is not None and run.notes == []
    ids = tokenizer.encode("the report decodes", add_special_tokens=False)
    assert tokenizer.decode(ids) == "the report decodes"
    broken = RunData(tmp_path, "run", "bliss", {"tokenizer": str(tmp_path / "none.json")}, [])
    assert load_tokenizer(broken) is None and "could not be loaded" in broken.notes[0]
