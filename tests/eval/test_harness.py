"""The eval command against lm-eval: local task files match lm-eval's own definitions, a tiny
model evaluates on every task, and bad task files fail with one line naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_bliss.eval.task_specs import LOCAL_TASKS, lm_eval_tasks_dir, write_local_task_dir
from tests.eval.conftest import HUB_FILES

# lm-eval's own YAML for each task (independent of the shipped YAMLs' include lines).
LM_EVAL_YAML = {
    "lambada_openai": "lambada/lambada_openai.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "piqa": "piqa/piqa.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "sciq": "sciq/sciq.yaml",
    "winogrande": "winogrande/default.yaml",
    "boolq": "super_glue/boolq/default.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
}
ALL_LOCAL = list(LM_EVAL_YAML)


def lm_eval_reference_task(name: str, hub_file: Path, split: str):
    """lm-eval's own task definition for ``name``, reading a hub-schema copy of the documents."""
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(lm_eval_tasks_dir() / LM_EVAL_YAML[name])
    config.pop("tag", None)
    config.update(
        dataset_path="json",
        dataset_name=None,
        dataset_kwargs={"data_files": {split: str(hub_file)}},
        training_split=None,
        validation_split=split if split == "validation" else None,
        test_split=split if split == "test" else None,
        fewshot_split=None,
    )
    return ConfigurableTask(config=config)


def shipped_tasks(task_data: Path, tmp_path: Path, names: list[str]) -> dict:
    from lm_eval.tasks import TaskManager

    local = write_local_task_dir(tmp_path / "include", names, task_data, None)
    manager = TaskManager(include_path=str(tmp_path / "include"), include_defaults=False)
    return {
        name: manager.load([spec.local_task_name])["tasks"][spec.local_task_name]
        for name, spec in local.items()
    }


def first_request(task) -> tuple:
    docs = list(task.eval_docs)
    doc = docs[0]
    multiple_choice = task.config.output_type == "multiple_choice"
    choices = task.doc_to_choice(doc) if multiple_choice else None
    return len(docs), task.doc_to_text(doc), task.doc_to_target(doc), choices


def test_local_tasks_match_lm_eval_definitions(tiny_task_data, hub_schema_files, tmp_path):
    ours = shipped_tasks(tiny_task_data, tmp_path, ALL_LOCAL)
    assert sorted(ours) == sorted(ALL_LOCAL)
    for name, task in ours.items():
        reference = lm_eval_reference_task(name, hub_schema_files[name], HUB_FILES[name])
        if name != "lambada_openai":
            assert task.config.output_type == "multiple_choice", name
        assert task.config.output_type == reference.config.output_type, name
        assert [m["metric"] for m in task.config.metric_list] == [
            m["metric"] for m in reference.config.metric_list
        ], name
        assert first_request(task) == first_request(reference), name


def _assert_in_range(results: dict, tasks: list[str], limit: int):
    for name in tasks:
        entry = results[name]
        assert entry["num_docs"] == limit, name
        assert entry["split"] == LOCAL_TASKS[name].split, name
        assert 0.0 <= entry["acc"] <= 1.0, name
        if name not in ("winogrande", "boolq", "lambada_openai"):
            assert 0.0 <= entry["acc_norm"] <= 1.0, name
    assert results["lambada_openai"]["perplexity"] > 1.0
    assert results["sciq"]["split"] == "validation" and "test" in results["sciq"]["note"]
    assert not any("," in key for entry in results.values() for key in entry)


def test_eval_cli_tiny_model_every_local_task(
    tiny_model_dir, tiny_task_data, ppl_file, tmp_path, capsys
):
    from megatron_bliss.cli import main

    output = tmp_path / "eval.json"
    tasks = ALL_LOCAL + ["logiqa"]
    argv = ["eval", "--model", str(tiny_model_dir), "--tasks", ",".join(tasks)]
    argv += ["--task-data", str(tiny_task_data), "--ppl-data", str(ppl_file), "--limit", "3"]
    argv += ["--output", str(output), "--target-set-task", "lambada_openai", "--batch-size", "4"]
    assert main(argv) == 0
    results = json.loads(output.read_text())
    _assert_in_range(results, ALL_LOCAL, limit=3)
    assert "logiqa" not in results  # no local copy and the hub is off in tests: skipped, with a row
    assert results["lambada_openai"]["is_target_set"] is True
    assert results["c4_ppl"]["word_perplexity"] > 1.0 and results["c4_ppl"]["num_docs"] == 3
    printed = capsys.readouterr().out
    assert "lambada_openai (target set)" in printed and "skipped" in printed
    assert "8 of the paper's 9 tasks (missing: logiqa)" in " ".join(printed.split())


def test_eval_real_task_data(shared_data, tiny_model_dir, tmp_path):
    from megatron_bliss.eval import evaluate_model

    results = evaluate_model(
        tiny_model_dir,
        ALL_LOCAL,
        task_data=shared_data / "eval",
        limit=2,
        output=tmp_path / "e.json",
    )
    _assert_in_range(results, ALL_LOCAL, limit=2)
    assert json.loads((tmp_path / "e.json").read_text()) == results


# Published document counts of the split lm-eval scores (SciQ: validation, the local split).
REAL_COUNTS = {
    "lambada_openai": 5153,
    "hellaswag": 10042,
    "piqa": 1838,
    "arc_easy": 2376,
    "arc_challenge": 1172,
    "sciq": 1000,
    "winogrande": 1267,
    "boolq": 3270,
    "openbookqa": 500,
}


def _hub_schema_first_row(name: str, task_data: Path) -> dict:
    first = json.loads((task_data / LOCAL_TASKS[name].data_file).open().readline())
    if name in ("arc_easy", "arc_challenge", "openbookqa"):
        key = "question_stem" if name == "openbookqa" else "question"
        labels = ["A", "B", "C", "D", "E"][: len(first["choices"])]
        return {
            key: first["question"],
            "choices": {"text": first["choices"], "label": labels},
            "answerKey": labels[first["gold"]],
        }
    if name == "boolq":
        return {**first, "label": int(first["answer"]), "idx": 0}
    return first


def test_real_task_files_match_lm_eval_counts_and_prompts(shared_data, tmp_path):
    task_data = shared_data / "eval"
    ours = shipped_tasks(task_data, tmp_path, ALL_LOCAL)
    for name, task in ours.items():
        count, text, target, choices = first_request(task)
        assert count == REAL_COUNTS[name], name
        hub_file = tmp_path / f"{name}.jsonl"
        hub_file.write_text(json.dumps(_hub_schema_first_row(name, task_data)) + "\n")
        reference = lm_eval_reference_task(name, hub_file, HUB_FILES[name])
        assert (text, target, choices) == first_request(reference)[1:], name


@pytest.mark.parametrize("problem", ["missing", "bad_json", "missing_field", "null_field"])
def test_bad_task_file_gives_one_error_line(problem, tiny_model_dir, tmp_path, capsys):
    from megatron_bliss.cli import main

    path = tmp_path / "piqa" / "validation.jsonl"
    path.parent.mkdir(parents=True)
    good = json.dumps({"goal": "g", "sol1": "a", "sol2": "b", "label": 0})
    if problem == "bad_json":
        path.write_text(good + "\n{not json\n")
    elif problem == "missing_field":
        path.write_text(json.dumps({"goal": "g", "sol1": "a", "label": 0}) + "\n")
    elif problem == "null_field":
        path.write_text(
            good + "\n" + json.dumps({"goal": None, "sol1": "a", "sol2": "b", "label": 0})
        )
    argv = ["eval", "--model", str(tiny_model_dir), "--tasks", "piqa", "--task-data", str(tmp_path)]
    assert main(argv + ["--output", str(tmp_path / "eval.json")]) == 2
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert len(error_lines) == 1 and str(path) in error_lines[0]
    expected = {"missing": "not found", "bad_json": ":2: not valid JSON", "missing_field": "sol2",
                "null_field": ":2: field(s) goal null"}  # fmt: skip
    assert expected[problem] in error_lines[0]
    assert not (tmp_path / "eval.json").exists()


def test_task_file_with_byte_order_mark_is_accepted(tmp_path):
    from megatron_bliss.eval.task_specs import validate_jsonl

    path = tmp_path / "ppl.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"text": "a"}\r\n\r\n{"text": "b"}\r\n')
    assert validate_jsonl(path, ("text",)) == 2


def test_eval_with_no_task_named_says_so(tmp_path, capsys):
    from megatron_bliss.cli import main

    assert main(["eval", "--model", str(tmp_path), "--tasks", " , "]) == 2
    assert "--tasks names no task (known: " in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "value"), [("--limit", "0"), ("--limit", "-3"),
                                             ("--batch-size", "0"), ("--batch-size", "x")])  # fmt: skip
def test_eval_rejects_unusable_limit_and_batch_size_before_loading(tmp_path, capsys, flag, value):
    from megatron_bliss.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["eval", "--model", str(tmp_path), "--tasks", "piqa", flag, value])
    assert stop.value.code == 2
    assert f"argument {flag}:" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["missing", "checkpoint", "other", "no tokenizer"])
def test_eval_on_something_that_is_not_a_model_says_what_it_is(
    tmp_path, capsys, kind, tiny_model_dir
):
    import shutil

    from megatron_bliss.cli import main

    model = tmp_path / "m"
    if kind == "checkpoint":
        (model / "checkpoints").mkdir(parents=True)
        (model / "checkpoints" / "latest").write_text("global_step2")
    elif kind == "other":
        model.mkdir()
    elif kind == "no tokenizer":  # a model saved without one: lm-eval would fail in an assert
        model.mkdir()
        for name in ("config.json", "model.safetensors"):
            shutil.copy(tiny_model_dir / name, model / name)
    argv = ["eval", "--model", str(model), "--tasks", "piqa", "--output", str(tmp_path / "e.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    expected = {"missing": "model directory not found", "checkpoint": "export-hf --checkpoint",
                "other": "no config.json", "no tokenizer": "no tokenizer files"}  # fmt: skip
    assert len(err.splitlines()) == 1 and expected[kind] in err


def test_hub_tasks_are_skipped_at_once_when_the_hub_does_not_answer(
    tiny_model_dir, tiny_task_data, tmp_path, monkeypatch, caplog
):
    """Offline cluster nodes without HF_HUB_OFFLINE: no 25-second hub retries per task, and the
    local tasks (task files, the perplexity file) still run."""
    from megatron_bliss.eval import evaluate_model, harness

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(harness, "hub_reachable", lambda: False)
    ppl = tmp_path / "ppl.jsonl"
    ppl.write_text(
        "".join(json.dumps({"text": f"held-out text number {i}."}) + "\n" for i in range(3))
    )
    with caplog.at_level("WARNING", logger="megatron_bliss.eval.harness"):
        results = evaluate_model(
            tiny_model_dir, ["sciq", "logiqa"], task_data=tiny_task_data, ppl_data=ppl,
            limit=2, batch_size=4, output=tmp_path / "eval.json",
        )  # fmt: skip
    assert "sciq" in results and "c4_ppl" in results and "logiqa" not in results
    assert "the hub is not reachable" in caplog.text
