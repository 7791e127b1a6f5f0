"""The target set: held-out text whose loss a selector tries to lower (LAMBADA, clean C4, ...).

Three JSON-lines formats (docs/formats.md, "Inputs"):

- ``documents``: field ``text``; every token is scored (language-modelling loss).
- ``last_word``: field ``text``; only the final whitespace-separated word is scored (LAMBADA).
- ``prompt_continuation``: fields ``prompt`` and ``continuation``; only the continuation is scored.

Each example becomes ``input_ids`` and ``labels`` (``-100`` where no loss is taken), truncated
from the left to ``max_length + 1`` tokens so the scored tail always survives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from megatron_bliss.data.readers import is_encodable
from megatron_bliss.errors import ConfigError, InputError, MissingFileError

FORMATS = ("documents", "last_word", "prompt_continuation")
IGNORE_INDEX = -100


def pad_id(tokenizer) -> int:
    """The id that fills batches past an example's end (never scored): the tokenizer's pad token,
    else GPT-NeoX's ``<|padding|>``, else 0."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(tokenizer.get_vocab().get("<|padding|>", 0))


@dataclass
class TargetExample:
    input_ids: np.ndarray  # int64, length n
    labels: np.ndarray  # int64, length n; IGNORE_INDEX where unscored


def _read_rows(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise InputError(f"{path}:{number}: invalid JSON ({error.msg})") from None
    if not rows:
        raise InputError(f"{path}: target set is empty")
    return rows


def json_type(value) -> str:
    """JSON's name for the type of a parsed value (what the user wrote in the file)."""
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
             list: "an array", dict: "an object"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


def _field(row, name: str, fmt: str, where: str) -> str:
    """The string ``row[name]``, or one error naming the row and what the format expects."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object")
    if name not in row:
        wanted = "'prompt' and 'continuation'" if fmt == "prompt_continuation" else "'text'"
        raise InputError(f"{where}: missing field '{name}' (--target-format {fmt} reads {wanted})")
    if not isinstance(row[name], str):
        raise InputError(f"{where}: field '{name}' is {json_type(row[name])}, not a string")
    if not is_encodable(row[name]):
        raise InputError(f"{where}: field '{name}' holds an unpaired surrogate escape")
    return row[name]


def _split(row: dict, fmt: str, where: str) -> tuple[str, str]:
    """(context, scored text) of one row."""
    if fmt == "prompt_continuation":
        return _field(row, "prompt", fmt, where), _field(row, "continuation", fmt, where)
    text = _field(row, "text", fmt, where)
    if fmt == "documents":
        return "", text
    context, _, word = text.rstrip().rpartition(" ")
    if not context:
        raise InputError(f"{where}: no final word to score in {text[:40]!r}")
    return context, " " + word


def encode_example(tokenizer, context: str, scored: str, max_length: int) -> TargetExample:
    context_ids = tokenizer.encode(context, add_special_tokens=False) if context else []
    scored_ids = tokenizer.encode(scored, add_special_tokens=False)
    ids = (context_ids + scored_ids)[-(max_length + 1) :]
    labels = ([IGNORE_INDEX] * len(context_ids) + scored_ids)[-(max_length + 1) :]
    return TargetExample(np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64))


class TargetSet:
    """Tokenised target examples with loss masks, batched as padded tensors."""

    def __init__(self, examples: list[TargetExample], pad_id: int = 0, name: str = "target"):
        if not examples:
            raise InputError(f"{name}: target set has no examples")
        self.examples = examples
        self.pad_id = pad_id
        self.name = name

    @classmethod
    def from_jsonl(
        cls,
        path: str | Path,
        tokenizer,
        fmt: str = "documents",
        max_length: int = 1024,
        limit: int | None = None,
    ) -> TargetSet:
        if fmt not in FORMATS:
            raise ConfigError(f"target format '{fmt}' is not one of {', '.join(FORMATS)}")
        path = Path(path)
        if not path.exists():
            raise MissingFileError(f"{path}: target set not found")
        rows = _read_rows(path)[:limit]
        examples = []
        for number, row in enumerate(rows, start=1):
            context, scored = _split(row, fmt, f"{path}:{number}")
            example = encode_example(tokenizer, context, scored, max_length)
            if (example.labels[1:] != IGNORE_INDEX).any():
                examples.append(example)
        return cls(examples, pad_id=pad_id(tokenizer), name=str(path))

    def __len__(self) -> int:
        return len(self.examples)

    def subset(self, indices) -> TargetSet:
        """The examples at ``indices``, in that order (a split of one target set)."""
        return TargetSet([self.examples[int(i)] for i in indices], self.pad_id, self.name)

    def width(self, indices) -> int:
        """The padded length of ``batch(indices)``."""
        return max(len(self.examples[int(i)].input_ids) for i in indices)

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``(input_ids, labels)``; labels are already aligned to inputs (HF style)."""
        chosen = [self.examples[int(i)] for i in indices]
        width = self.width(indices)
        input_ids = torch.full((len(chosen), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(chosen), width), IGNORE_INDEX, dtype=torch.long)
        for row, example in enumerate(chosen):
            input_ids[row, : len(example.input_ids)] = torch.from_numpy(example.input_ids)
            labels[row, : len(example.labels)] = torch.from_numpy(example.labels)
        return input_ids, labels

    def sample(self, batch_size: int, generator: np.random.Generator):
        return self.batch(
            generator.choice(len(self), size=min(batch_size, len(self)), replace=False)
        )
