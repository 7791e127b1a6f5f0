"""Read a pipeline run directory (docs/formats.md, "A pipeline run") for the report; a single
``pretrain`` run directory reads as a run of one round without selection.

Every piece is optional here: a missing or unreadable file is recorded as a note that the report
prints, so a half-finished run still gets a report of what exists.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from megatron_bliss.errors import InputError, MissingFileError

_ROUND_DIR = re.compile(r"^round_(\d+)$")


@dataclass
class RoundData:
    """What one ``round_r/`` folder holds."""

    index: int
    path: Path
    metrics: list[dict[str, Any]] = field(default_factory=list)
    eval: dict[str, dict[str, Any]] = field(default_factory=dict)
    scores: np.ndarray | None = None
    selection: np.ndarray | None = None
    selection_meta: dict[str, Any] = field(default_factory=dict)
    tokens: float | None = None  # cumulative target-model tokens after this round
    flops: dict[str, float] = field(default_factory=dict)  # this round's FLOPs by kind

    @property
    def threshold(self) -> float | None:
        """The score a sequence needed to be kept: from selection.json, else the lowest kept."""
        if "threshold" in self.selection_meta:
            return float(self.selection_meta["threshold"])
        if self.scores is not None and self.selection is not None and len(self.selection):
            return float(self.scores[self.selection].min())
        return None


@dataclass
class RunData:
    """One pipeline run: its method, rounds and whatever could not be read."""

    path: Path
    name: str
    method: str
    pipeline: dict[str, Any]
    rounds: list[RoundData]
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.method if self.method == self.name else f"{self.method} ({self.name})"


def _read_json(path: Path, notes: list[str]) -> Any:
    if not path.is_file():
        notes.append(f"`{path.name}` missing in `{path.parent.name}/`")
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        notes.append(f"`{path}` is not valid JSON ({error.msg}); ignored")
        return None


def read_metrics(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """Records of ``metrics.jsonl``; unreadable lines are skipped and counted in ``notes``."""
    if not path.is_file():
        notes.append(f"`metrics.jsonl` missing in `{path.parent.name}/`")
        return []
    records, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    if bad:
        notes.append(f"`{path.parent.name}/metrics.jsonl`: {bad} unreadable line(s) skipped")
    return records


def _load_npy(path: Path, notes: list[str]) -> np.ndarray | None:
    if not path.is_file():
        notes.append(f"`{path.name}` missing in `{path.parent.name}/`")
        return None
    try:
        return np.load(path)
    except (ValueError, OSError) as error:
        notes.append(f"`{path}` unreadable ({error}); ignored")
        return None


def _read_round(path: Path, index: int, pipeline_round: dict[str, Any], notes: list[str]):
    data = RoundData(index=index, path=path)
    data.metrics = read_metrics(path / "metrics.jsonl", notes)
    data.eval = _read_json(path / "eval.json", notes) or {}
    if index >= 1:
        data.scores = _load_npy(path / "scores.npy", notes)
        data.selection = _load_npy(path / "selection.npy", notes)
        data.selection_meta = _read_json(path / "selection.json", notes) or {}
    data.tokens = pipeline_round.get("tokens")
    data.flops = {k: float(v) for k, v in (pipeline_round.get("flops") or {}).items()}
    return data


def load_run(path: str | Path) -> RunData:
    """Read ``path`` (a pipeline run directory, or one ``pretrain`` run directory); raise only
    when it is neither."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: a file, not a run directory")
    if not path.is_dir():
        raise MissingFileError(f"{path}: run directory not found")
    round_dirs = sorted(
        (int(m.group(1)), child)
        for child in path.iterdir()
        if child.is_dir() and (m := _ROUND_DIR.match(child.name))
    )
    if not round_dirs:
        if (path / "metrics.jsonl").is_file():
            return _load_training_run(path)
        raise InputError(
            f"{path}: no round_0/ ... round_R/ folders (not a pipeline run directory) and no "
            "metrics.jsonl (not a pretrain run directory)"
        )
    notes: list[str] = []
    pipeline = _read_json(path / "pipeline.json", notes) or {}
    by_round = {int(r.get("round", i)): r for i, r in enumerate(pipeline.get("rounds", []))}
    rounds = [_read_round(p, i, by_round.get(i, {}), notes) for i, p in round_dirs]
    method = pipeline.get("method") or next(
        (r.selection_meta["method"] for r in rounds if "method" in r.selection_meta), None
    )
    if method is None:
        notes.append("method unknown (no pipeline.json or selection.json): using the folder name")
    return RunData(path, path.name, method or path.name, pipeline, rounds, notes)


def _load_training_run(path: Path) -> RunData:
    """A ``pretrain`` run directory as a run of one round and no selection (method "pretrain"):
    its loss curve, and its evaluation when ``eval --output RUN_DIR/eval.json`` wrote one."""
    notes: list[str] = []
    data = RoundData(index=0, path=path)
    data.metrics = read_metrics(path / "metrics.jsonl", notes)
    if (path / "eval.json").is_file():
        data.eval = _read_json(path / "eval.json", notes) or {}
    tokens = [r["consumed_tokens"] for r in data.metrics if "consumed_tokens" in r]
    data.tokens = float(tokens[-1]) if tokens else None
    return RunData(path, path.name, "pretrain", {}, [data], notes)
