"""What a preprocessing run produced, typed: each output's path and counts, keyed by JSON key and
shard, plus the run's totals; and the check that no output is empty.

The result round-trips through JSON (``to_json``/``from_json``) because a partitioned run records
each finished part's result in its completion marker.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_bliss.errors import InputError

RESULT_FORMAT = 2  # part markers of another format are redone, not misread


@dataclass(frozen=True)
class Output:
    """One finished dataset: documents of JSON key ``key`` dealt to shard ``shard``."""

    key: str
    shard: int
    path: str
    """Dataset prefix (``PREFIX_{key}_document`` or ``PREFIX_shard{k}_{key}_document``)."""
    documents: int = 0
    tokens: int = 0


@dataclass
class FilesResult:
    """The outputs of tokenising a group of input files, and what was skipped on the way."""

    outputs: list[Output]
    empty_documents: dict[str, int]
    bad_lines: int
    next_document: dict[str, int]
    """Per JSON key: documents seen so far (a later part continues the round-robin here)."""
    rates: str = ""

    def keys(self) -> list[str]:
        return list(dict.fromkeys(output.key for output in self.outputs))

    def documents_per_key(self) -> dict[str, list[int]]:
        per_key: dict[str, list[int]] = {}
        for output in self.outputs:
            per_key.setdefault(output.key, []).append(output.documents)
        return per_key

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RESULT_FORMAT,
            "outputs": [vars(output) for output in self.outputs],
            "empty_documents": self.empty_documents,
            "bad_lines": self.bad_lines,
            "next_document": self.next_document,
            "rates": self.rates,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FilesResult | None:
        """The result recorded in ``data``; None when it was written in another format."""
        if data.get("format") != RESULT_FORMAT:
            return None
        return cls(
            outputs=[Output(**output) for output in data["outputs"]],
            empty_documents=dict(data["empty_documents"]),
            bad_lines=int(data["bad_lines"]),
            next_document=dict(data["next_document"]),
            rates=data.get("rates", ""),
        )

    def summary(self) -> dict[str, Any]:
        """What ``run_preprocess`` returns: ``counts`` maps each output path to ``[documents,
        tokens]``, beside the skipped empty documents and bad lines."""
        return {
            "counts": {output.path: [output.documents, output.tokens] for output in self.outputs},
            "empty_documents": dict(self.empty_documents),
            "bad_lines": self.bad_lines,
            "rates": self.rates,
        }


def check_has_documents(paths: list[Path], result: FilesResult, shards: int = 1) -> None:
    """An empty dataset (or shard) is never what a user meant: stop instead of writing one."""
    named = str(paths[0]) + (f" (and {len(paths) - 1} more)" if len(paths) > 1 else "")
    for key, documents in result.documents_per_key().items():
        if sum(documents) == 0:
            raise InputError(
                f"{named}: no documents in '{key}' (the input is empty or every text is empty)"
            )
        if min(documents) == 0:
            raise InputError(f"{named}: {sum(documents)} document(s) cannot fill {shards} shards")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def describe_inputs(paths: list[Path]) -> list[dict]:
    return [{"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in paths]
