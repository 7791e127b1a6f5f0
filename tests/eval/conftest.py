"""Fixtures for the eval tests: tiny task files in the layout of ``../shared/data/eval``, the
same documents in the hub schemas lm-eval's own YAMLs read, and a tiny exported model."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import pytest

NUM_DOCS = 6


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def _phrases(corpus_texts: list[str], seed: int):
    words = " ".join(corpus_texts).split()
    rng = random.Random(seed)

    def phrase(length: int) -> str:
        start = rng.randrange(len(words) - length)
        return " ".join(words[start : start + length])

    return rng, phrase


def hub_schema_rows(corpus_texts: list[str]) -> dict[str, list[dict]]:
    """``NUM_DOCS`` documents per task, in the Hugging Face schema lm-eval's YAMLs expect."""
    rng, phrase = _phrases(corpus_texts, seed=0)
    rows: dict[str, list[dict]] = {name: [] for name in HUB_FILES}
    for index in range(NUM_DOCS):
        four = [phrase(4) for _ in range(4)]
        gold = (index + 2) % 4  # first document: not the first choice
        rows["lambada_openai"].append({"text": phrase(30)})
        rows["hellaswag"].append(
            {
                "ind": index,
                "activity_label": phrase(2),
                "ctx_a": phrase(10) + " [title] step.",
                "ctx_b": phrase(2),
                "ctx": "",
                "endings": four,
                "source_id": f"wikihow~{index}",
                "split": "val",
                "split_type": "indomain",
                "label": str(gold),
            }
        )
        rows["piqa"].append(
            {"goal": phrase(8), "sol1": phrase(6), "sol2": phrase(6), "label": (index + 1) % 2}
        )
        for name in ("arc_easy", "arc_challenge"):
            rows[name].append(
                {
                    "id": f"{name}-{index}",
                    "question": phrase(12) + "?",
                    "choices": {"text": four, "label": ["A", "B", "C", "D"]},
                    "answerKey": "ABCD"[gold],
                }
            )
        rows["sciq"].append(
            {
                "question": phrase(10) + "?",
                "distractor1": four[0],
                "distractor2": four[1],
                "distractor3": four[2],
                "correct_answer": four[3],
                "support": ("  " + phrase(20)) if index % 2 else "",
            }
        )
        names = [phrase(1).strip(string.punctuation) or "Sam" for _ in range(2)]
        rows["winogrande"].append(
            {
                "sentence": f"{phrase(6)} _ {phrase(5)}.",
                "option1": names[0],
                "option2": names[1],
                "answer": str((index + 1) % 2 + 1),
            }
        )
        rows["boolq"].append(
            {"question": phrase(7), "passage": phrase(40), "idx": index, "label": (index + 1) % 2}
        )
        rows["openbookqa"].append(
            {
                "id": f"obqa-{index}",
                "question_stem": phrase(9),
                "choices": {"text": four, "label": ["A", "B", "C", "D"]},
                "answerKey": "ABCD"[gold],
            }
        )
    rng.shuffle(rows["lambada_openai"])
    return rows


# Where each task's hub-schema copy goes, and its split as lm-eval's YAML names it.
HUB_FILES = {
    "lambada_openai": "test",
    "hellaswag": "validation",
    "piqa": "validation",
    "arc_easy": "test",
    "arc_challenge": "test",
    "sciq": "validation",
    "winogrande": "validation",
    "boolq": "validation",
    "openbookqa": "test",
}


def _olmes(row: dict, question_key: str) -> dict:
    return {
        "id": row["id"],
        "question": row[question_key],
        "choices": row["choices"]["text"],
        "gold": row["choices"]["label"].index(row["answerKey"]),
    }


def write_local_layout(root: Path, rows: dict[str, list[dict]]) -> Path:
    """The same documents in the layout and schemas of ``../shared/data/eval``."""
    _write_jsonl(root / "lambada/lambada_test.jsonl", rows["lambada_openai"])
    _write_jsonl(root / "hellaswag/validation.jsonl", rows["hellaswag"])
    _write_jsonl(root / "piqa/validation.jsonl", rows["piqa"])
    for name in ("arc_easy", "arc_challenge"):
        _write_jsonl(root / name / "validation.jsonl", rows[name])
        _write_jsonl(
            root / name / "test.from_olmes.jsonl", [_olmes(r, "question") for r in rows[name]]
        )
    _write_jsonl(root / "sciq/validation.jsonl", rows["sciq"])
    _write_jsonl(root / "winogrande/winogrande_xl_validation.jsonl", rows["winogrande"])
    _write_jsonl(
        root / "boolq/validation.jsonl",
        [
            {"question": r["question"], "answer": bool(r["label"]), "passage": r["passage"]}
            for r in rows["boolq"]
        ],
    )
    _write_jsonl(
        root / "openbookqa/test.from_olmes.jsonl",
        [_olmes(r, "question_stem") for r in rows["openbookqa"]],
    )
    return root


@pytest.fixture(scope="session")
def eval_rows(corpus_texts):
    return hub_schema_rows(corpus_texts)


@pytest.fixture(scope="session")
def tiny_task_data(tmp_path_factory, eval_rows) -> Path:
    return write_local_layout(tmp_path_factory.mktemp("task_data"), eval_rows)


@pytest.fixture(scope="session")
def hub_schema_files(tmp_path_factory, eval_rows) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub_schema")
    return {name: _write_jsonl(root / f"{name}.jsonl", rows) for name, rows in eval_rows.items()}


@pytest.fixture(scope="session")
def ppl_file(tmp_path_factory, corpus_texts) -> Path:
    rows = [{"text": text[:300]} for text in corpus_texts[:4]]
    return _write_jsonl(tmp_path_factory.mktemp("ppl") / "heldout.jsonl", rows)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A randomly initialised pythia-tiny saved like ``export-hf`` does (model + tokenizer)."""
    import torch

    from megatron_bliss.models.presets import build_model

    torch.manual_seed(0)
    model = build_model("pythia-tiny", vocab_size=len(tokenizer))
    path = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


SEQ_LENGTH = 32
ROUND_STEPS = 20
TOKENS_PER_STEP = 1024


def _round_metrics(round_index: int, quality: float) -> list[dict]:
    """A fresh training stage per round: consumed_tokens restart at zero."""
    records = []
    for step in range(1, ROUND_STEPS + 1):
        progress = round_index * ROUND_STEPS + step
        loss = 6.0 * (1 + progress) ** (-0.15 * quality)
        records.append(
            {
                "step": step,
                "loss": loss,
                "lr": 1e-3,
                "tokens_per_second": 5000.0,
                "consumed_tokens": step * TOKENS_PER_STEP,
            }
        )
        if step % 10 == 0:
            records.append({"step": step, "val_loss": loss + 0.2})
    return records


def _round_eval(round_index: int, quality: float, task_files: dict[str, str]) -> dict:
    from megatron_bliss.eval.task_specs import HEADLINE_TASKS

    results = {}
    for offset, task in enumerate(t for t in HEADLINE_TASKS if t != "logiqa"):
        value = min(0.95, 0.25 + 0.01 * offset + 0.04 * round_index * quality)
        results[task] = {"acc": value - 0.01, "acc_stderr": 0.01, "acc_norm": value}
        results[task].update(acc_norm_stderr=0.01, split="test", num_docs=50)
        if task in ("winogrande", "boolq"):
            results[task]["acc"] = value
        if task in task_files:
            results[task]["data_file"] = task_files[task]
    results["lambada_openai"] = {"acc": 0.1 * round_index * quality, "perplexity": 900.0}
    results["lambada_openai"].update(split="test", num_docs=50, is_target_set=True)
    return results


def make_pipeline_run(
    root: Path, method: str, quality: float, shard: str, tokenizer_dir, target_path, task_files
):
    """A pipeline run directory as docs/formats.md describes it: warm-up round plus two rounds."""
    import numpy as np

    from megatron_bliss.data.pool import SequencePool
    from megatron_bliss.selection.rule import write_selection

    run = root / method
    num_sequences = len(SequencePool(shard, SEQ_LENGTH))
    rounds = []
    for index in range(3):
        folder = run / f"round_{index}"
        (folder / "checkpoints").mkdir(parents=True)
        _write_jsonl(folder / "metrics.jsonl", _round_metrics(index, quality))
        (folder / "eval.json").write_text(json.dumps(_round_eval(index, quality, task_files)))
        flops = {"target_training": 6e9 * (index + 1), "selection_training": 0.0, "scoring": 0.0}
        if index >= 1:
            scores = np.random.default_rng(index + 10 * int(quality)).normal(size=num_sequences)
            if method == "bliss":
                flops.update(selection_training=2e9, scoring=1e9)
            write_selection(
                folder,
                scores,
                method=method,
                fraction=0.2,
                data_prefix=shard,
                seq_length=SEQ_LENGTH,
            )
            (folder / "score_model").mkdir()
        tokens = (index + 1) * ROUND_STEPS * TOKENS_PER_STEP
        rounds.append(
            {
                "round": index,
                "dir": folder.name,
                "data_prefix": shard,
                "tokens": tokens,
                "flops": flops,
            }
        )
    pipeline = {
        "method": method,
        "target_set": {"path": str(target_path), "format": "documents", "task": "lambada_openai"},
        "rounds": rounds,
        "tokenizer": str(tokenizer_dir),
    }
    (run / "pipeline.json").write_text(json.dumps(pipeline))
    return run


@pytest.fixture
def synthetic_runs(tmp_path, tiny_shard, tokenizer_dir, corpus_texts, tiny_task_data):
    """Two pipeline runs, "bliss" (learns faster) and "random", over the same tiny shard."""
    target = _write_jsonl(tmp_path / "target.jsonl", [{"text": t} for t in corpus_texts[:5]])
    task_files = {"piqa": str(tiny_task_data / "piqa/validation.jsonl")}
    runs_root = tmp_path / "runs"
    return [
        make_pipeline_run(runs_root, method, quality, tiny_shard, tokenizer_dir, target, task_files)
        for method, quality in (("bliss", 2.0), ("random", 1.0))
    ]
