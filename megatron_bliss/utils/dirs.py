"""Output folders that fail with one line, not an ``OSError`` traceback, when a file is in the way.

Every command writes under a folder the user names (``--run-dir``, ``--output``, ``run_dir=``);
a typo that points into an existing file should stop the command at start, naming the file.
"""

from __future__ import annotations

from pathlib import Path

from megatron_bliss.errors import ConfigError


def check_dir_creatable(path: str | Path, what: str = "output folder") -> Path:
    """``path`` as a Path, after checking that it or its nearest existing ancestor is a folder."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                where = "is a file" if candidate == path else f"is under the file {candidate}"
                raise ConfigError(f"{path}: {what} {where}")
            break
    return path


def ensure_dir(path: str | Path, what: str = "output folder") -> Path:
    """``mkdir -p path``, with :func:`check_dir_creatable`'s one-line error."""
    path = check_dir_creatable(path, what)
    path.mkdir(parents=True, exist_ok=True)
    return path
