"""Zero-shot evaluation of a Hugging Face model directory through lm-eval-harness's Python API.

``evaluate_model`` is what the ``eval`` command and the pipeline call: it builds lm-eval tasks
(local files through the shipped YAMLs, otherwise lm-eval's hub definitions), runs
``simple_evaluate`` on an ``HFLM`` and writes ``eval.json`` in the shape docs/formats.md gives.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from megatron_bliss.errors import ConfigError, InputError, MissingFileError
from megatron_bliss.eval.task_specs import (
    HEADLINE_TASKS,
    HUB_TASKS,
    KNOWN_TASKS,
    PPL_TASK,
    LocalTask,
    headline_metric,
    write_local_task_dir,
)
from megatron_bliss.utils.dirs import check_dir_creatable
from megatron_bliss.utils.hub import hub_offline, hub_reachable
from megatron_bliss.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

# Perplexity stderr is bootstrapped; lm-eval's default of 100k resamples takes minutes on CPU.
BOOTSTRAP_ITERS = 1000


def not_a_model_reason(path: Path) -> str:
    """Why ``path`` cannot be evaluated, with the command that fixes the common case."""
    if not path.exists():
        return "model directory not found"
    if (path / "latest").is_file() or (path / "checkpoints" / "latest").is_file():
        return (
            "a DeepSpeed checkpoint, not a Hugging Face model directory; export it first: "
            f"megatron-bliss export-hf --checkpoint {path} --output DIR"
        )
    return "not a Hugging Face model directory (no config.json)"


def require_tokenizer_files(model_dir: Path) -> None:
    """lm-eval loads the tokenizer from the model directory and, without one, dies in an
    ``AssertionError`` of its own: say what is missing and how to add it instead."""
    from megatron_bliss.data.tokenizer import TOKENIZER_FILES, holds_tokenizer

    if not holds_tokenizer(model_dir):
        raise MissingFileError(
            f"{model_dir}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); export with "
            "megatron-bliss export-hf --tokenizer TOK, or save the tokenizer into the directory"
        )


def parse_task_list(tasks: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> known task names, in order, without duplicates."""
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    names = list(dict.fromkeys(name.strip() for name in names if name.strip()))
    unknown = [name for name in names if name not in KNOWN_TASKS]
    if unknown:
        raise ConfigError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(KNOWN_TASKS)}")
    return names


def default_output_path(model_dir: str | Path) -> Path:
    """``RUN_DIR/eval.json`` when the model sits inside a run directory, else ``MODEL_DIR/eval.json``.

    A run directory is recognised by its ``metrics.jsonl`` (docs/formats.md), e.g. a model exported to
    ``round_1/hf`` is evaluated into ``round_1/eval.json``.
    """
    model_dir = Path(model_dir)
    if (model_dir.parent / "metrics.jsonl").is_file():
        return model_dir.parent / "eval.json"
    return model_dir / "eval.json"


def _load_tasks(manager, names: list[str], local: dict[str, LocalTask], with_ppl: bool):
    """Build each task on its own, so one unreachable hub task is skipped, not fatal."""
    loaded: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in names:
        if name == PPL_TASK and not with_ppl:
            skipped[name] = "no --ppl-data file given"
            continue
        lm_eval_name = local[name].local_task_name if name in local else name
        reads_local_files = name in local or name == PPL_TASK  # the ppl task reads ppl_data
        if not reads_local_files and not hub_offline() and not hub_reachable():
            skipped[name] = "data not local and the hub is not reachable (no connection in 3 s)"
            continue
        try:
            loaded[name] = manager.load([lm_eval_name])["tasks"][lm_eval_name]
        except Exception as error:
            if reads_local_files:
                raise
            where = " (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set)" if hub_offline() else ""
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            skipped[name] = (
                f"data not reachable from the hub{where}: {type(error).__name__}: {first_line}"
            )
    for name, reason in skipped.items():
        logger.warning("task %s skipped: %s", name, reason)
    return loaded, skipped


def _clean_metrics(raw: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's ``{"acc,none": x, "alias": ...}`` -> ``{"acc": x}`` (numbers only, NaN -> None)."""
    metrics: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("alias", "sample_len") or not isinstance(value, (int, float)):
            continue
        metric, _, filter_name = key.partition(",")
        name = metric if filter_name in ("", "none") else f"{metric},{filter_name}"
        metrics[name] = None if isinstance(value, float) and math.isnan(value) else float(value)
    return metrics


def _collect_results(raw, loaded, local, data_files, target_set_task) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for name, task in loaded.items():
        entry = _clean_metrics(raw["results"][task.task_name])
        spec = local.get(name)
        if spec is not None:
            entry["split"] = spec.split
            entry["source"] = f"local: {spec.data_file}"
            entry["data_file"] = data_files[name]
            if spec.note:
                entry["note"] = spec.note
        elif name == PPL_TASK:
            entry["split"] = "held-out"
            entry["source"] = "local: --ppl-data"
            entry["data_file"] = data_files[name]
        else:
            entry["split"] = HUB_TASKS.get(name, ("", "unknown"))[1]
            entry["source"] = "hub"
        entry["num_docs"] = int(raw["n-samples"][task.task_name]["effective"])
        if name == target_set_task:
            entry["is_target_set"] = True
        results[name] = entry
    return results


def evaluate_model(
    model_dir: str | Path,
    tasks: str | list[str],
    task_data: str | Path | None = None,
    ppl_data: str | Path | None = None,
    limit: int | float | None = None,
    batch_size: int | str = 8,
    device: str | None = None,
    output: str | Path | None = None,
    target_set_task: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate a Hugging Face model directory with lm-eval; write and return ``eval.json``.

    Returns ``{task: {metric: value, "<metric>_stderr": s, "split": ..., "num_docs": n}}`` for
    every task that ran; tasks whose data cannot be reached are skipped with a warning.
    ``output`` defaults to :func:`default_output_path`; pass ``output=False`` to write nothing.
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise MissingFileError(f"{model_dir}: {not_a_model_reason(model_dir)}")
    require_tokenizer_files(model_dir)
    names = parse_task_list(tasks)
    if output:  # before the (slow) evaluation
        check_dir_creatable(Path(output).parent, "--output folder")
    if ppl_data is not None and PPL_TASK not in names:
        names.append(PPL_TASK)
    with tempfile.TemporaryDirectory(prefix="megatron_bliss_tasks_") as include_dir:
        local = write_local_task_dir(Path(include_dir), names, task_data, ppl_data)
        needs_hub = any(name not in local and name != PPL_TASK for name in names)
        manager = TaskManager(include_path=include_dir, include_defaults=needs_hub)
        loaded, _ = _load_tasks(manager, names, local, ppl_data is not None)
        if not loaded:
            raise InputError("no task could be loaded (see the messages above)")
        from megatron_bliss.utils.device import resolve_device

        resolved_device = str(resolve_device(device, "--device"))
        model = HFLM(
            pretrained=str(model_dir),
            batch_size=batch_size,
            device=resolved_device,
            dtype="float32" if resolved_device == "cpu" else "auto",
        )
        raw = simple_evaluate(
            model=model,
            tasks=list(loaded.values()),
            limit=limit,
            task_manager=manager,
            log_samples=False,
            bootstrap_iters=BOOTSTRAP_ITERS,
        )
    data_files = {
        name: str(Path(task_data).resolve() / spec.data_file) for name, spec in local.items()
    }
    if ppl_data is not None:
        data_files[PPL_TASK] = str(Path(ppl_data).resolve())
    results = _collect_results(raw, loaded, local, data_files, target_set_task)
    if output is not False:
        output_path = Path(output) if output else default_output_path(model_dir)
        atomic_write_json(output_path, results)
        logger.info("wrote %s", output_path)
    return results


def headline_average(
    results: dict[str, dict[str, Any]],
) -> tuple[float | None, list[str], list[str]]:
    """Mean of the paper's nine tasks that are present: (average, tasks used, tasks missing)."""
    used, values = [], []
    for task in HEADLINE_TASKS:
        value = results.get(task, {}).get(headline_metric(task))
        if value is not None:
            used.append(task)
            values.append(value)
    missing = [task for task in HEADLINE_TASKS if task not in used]
    return (sum(values) / len(values) if values else None), used, missing


def headline_label(used: list[str], missing: list[str]) -> str:
    if not missing:
        return "average of the paper's 9 tasks"
    return f"average of {len(used)} of the paper's 9 tasks (missing: {', '.join(missing)})"
