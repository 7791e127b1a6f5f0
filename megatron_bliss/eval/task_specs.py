"""The evaluation tasks this project knows, and the per-run task folder lm-eval reads.

Each offline task is a YAML shipped in ``megatron_bliss/eval/tasks/`` that ``include``s lm-eval's
installed definition and swaps only the data source for a local jsonl file (layout of
``../shared/data/eval``). Dataset paths in a YAML are relative to the working directory, so every
run writes its own copies with absolute paths into a temporary include folder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from megatron_bliss.errors import InputError, MissingFileError

logger = logging.getLogger(__name__)

SHIPPED_TASK_DIR = Path(__file__).parent / "tasks"

# The paper's nine-task average (BLISS, Table 1), in its order; LAMBADA is reported beside it.
HEADLINE_TASKS = (
    "sciq",
    "arc_easy",
    "arc_challenge",
    "logiqa",
    "openbookqa",
    "boolq",
    "hellaswag",
    "piqa",
    "winogrande",
)
PPL_TASK = "c4_ppl"


@dataclass(frozen=True)
class LocalTask:
    """How one lm-eval task reads its documents from a ``--task-data`` folder."""

    name: str
    data_file: str  # relative to the task-data folder
    split: str  # the split the local file holds, as written to eval.json
    required_keys: tuple[str, ...]
    headline_metric: str  # acc_norm where lm-eval reports it, else acc
    note: str = ""

    @property
    def yaml_name(self) -> str:
        return f"{self.name}.yaml"

    @property
    def local_task_name(self) -> str:
        return f"local_{self.name}"


_OLMES = ("question", "choices", "gold")
LOCAL_TASKS: dict[str, LocalTask] = {
    task.name: task
    for task in (
        LocalTask("lambada_openai", "lambada/lambada_test.jsonl", "test", ("text",), "acc"),
        LocalTask(
            "hellaswag",
            "hellaswag/validation.jsonl",
            "validation",
            ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
            "acc_norm",
        ),
        LocalTask(
            "piqa",
            "piqa/validation.jsonl",
            "validation",
            ("goal", "sol1", "sol2", "label"),
            "acc_norm",
        ),
        LocalTask("arc_easy", "arc_easy/test.from_olmes.jsonl", "test", _OLMES, "acc_norm"),
        LocalTask(
            "arc_challenge", "arc_challenge/test.from_olmes.jsonl", "test", _OLMES, "acc_norm"
        ),
        LocalTask(
            "sciq",
            "sciq/validation.jsonl",
            "validation",
            ("question", "distractor1", "distractor2", "distractor3", "correct_answer", "support"),
            "acc_norm",
            note="lm-eval scores the test split; only validation is available locally",
        ),
        LocalTask(
            "winogrande",
            "winogrande/winogrande_xl_validation.jsonl",
            "validation",
            ("sentence", "option1", "option2", "answer"),
            "acc",
        ),
        LocalTask(
            "boolq",
            "boolq/validation.jsonl",
            "validation",
            ("question", "answer", "passage"),
            "acc",
        ),
        LocalTask("openbookqa", "openbookqa/test.from_olmes.jsonl", "test", _OLMES, "acc_norm"),
    )
}

# Metric lm-eval reports for tasks that only come from the hub, and the split it scores there.
HUB_TASKS: dict[str, tuple[str, str]] = {
    "logiqa": ("acc_norm", "test"),
    "lambada_openai": ("acc", "test"),
    "hellaswag": ("acc_norm", "validation"),
    "piqa": ("acc_norm", "validation"),
    "arc_easy": ("acc_norm", "test"),
    "arc_challenge": ("acc_norm", "test"),
    "sciq": ("acc_norm", "test"),
    "winogrande": ("acc", "validation"),
    "boolq": ("acc", "validation"),
    "openbookqa": ("acc_norm", "test"),
}
KNOWN_TASKS = tuple(HUB_TASKS) + (PPL_TASK,)


def headline_metric(task: str) -> str:
    """The metric quoted for ``task``: acc_norm where lm-eval reports it, else acc."""
    return HUB_TASKS.get(task, ("acc", ""))[0]


def validate_jsonl(path: Path, required_keys: tuple[str, ...]) -> int:
    """Check every line of ``path`` is a JSON object with ``required_keys``; return the row count.

    lm-eval and ``datasets`` fail deep inside with messages that do not name the file, so the
    check runs first and raises one line ``FILE:LINE: what is wrong``.
    """
    if not path.is_file():
        raise MissingFileError(f"{path}: task data file not found")
    rows = 0
    with open(path, encoding="utf-8-sig") as handle:  # a byte-order mark is fine (datasets too)
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{line_number}: expected a JSON object")
            missing = [key for key in required_keys if key not in row]
            if missing:
                raise InputError(f"{path}:{line_number}: missing field(s) {', '.join(missing)}")
            nulls = [key for key in required_keys if row[key] is None]
            if nulls:
                raise InputError(f"{path}:{line_number}: field(s) {', '.join(nulls)} null")
            rows += 1
    if rows == 0:
        raise InputError(f"{path}: no documents")
    return rows


def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def _render_yaml(template: Path, replacements: dict[str, str], destination: Path) -> None:
    text = template.read_text()
    for key, value in replacements.items():
        # Paths sit inside double-quoted YAML scalars: escape like JSON does.
        text = text.replace("${" + key + "}", json.dumps(value)[1:-1])
    destination.write_text(text)


def write_local_task_dir(
    include_dir: Path,
    tasks: list[str],
    task_data: Path | None,
    ppl_data: Path | None,
) -> dict[str, LocalTask]:
    """Write the YAMLs of the offline tasks among ``tasks`` into ``include_dir``.

    Returns the tasks that will read local files (name -> spec). A task without a shipped local
    YAML (LogiQA) is left to the hub. A task with one whose file is absent or malformed raises.
    """
    include_dir.mkdir(parents=True, exist_ok=True)
    chosen: dict[str, LocalTask] = {}
    if task_data is not None:
        task_data = Path(task_data).expanduser().resolve()
        if not task_data.is_dir():
            raise MissingFileError(f"{task_data}: --task-data folder not found")
        for name in tasks:
            spec = LOCAL_TASKS.get(name)
            if spec is None:
                continue
            validate_jsonl(task_data / spec.data_file, spec.required_keys)
            replacements = {"LM_EVAL_TASKS": str(lm_eval_tasks_dir()), "TASK_DATA": str(task_data)}
            _render_yaml(
                SHIPPED_TASK_DIR / spec.yaml_name, replacements, include_dir / spec.yaml_name
            )
            chosen[name] = spec
    if ppl_data is not None:
        ppl_path = Path(ppl_data).expanduser().resolve()
        validate_jsonl(ppl_path, ("text",))
        _render_yaml(
            SHIPPED_TASK_DIR / f"{PPL_TASK}.yaml",
            {"PPL_DATA": str(ppl_path)},
            include_dir / f"{PPL_TASK}.yaml",
        )
    return chosen
