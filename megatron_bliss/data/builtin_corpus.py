"""A small English corpus that ships with Python itself (the ``pydoc`` help topics).

Used only as the last fallback of the demo (no ``--corpus``, no shared C4 sample, no network) and
in tests, so everything runs on a bare machine. Runs on it are labelled as smoke runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path


def builtin_documents(max_chars: int = 4000) -> list[str]:
    """The help topics split into paragraphs grouped into documents of at most ``max_chars``."""
    from pydoc_data.topics import topics

    documents: list[str] = []
    for name in sorted(topics):
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", topics[name]) if p.strip()]
        current = ""
        for paragraph in paragraphs:
            if current and len(current) + len(paragraph) > max_chars:
                documents.append(current)
                current = ""
            current = f"{current}\n\n{paragraph}" if current else paragraph
        if current:
            documents.append(current)
    return documents


def write_builtin_jsonl(path: str | Path, max_documents: int | None = None) -> Path:
    """Write the built-in corpus as a C4-style JSON-lines file (field ``text``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    documents = builtin_documents()[:max_documents]
    with open(path, "w") as handle:
        for text in documents:
            handle.write(json.dumps({"text": text}) + "\n")
    return path
