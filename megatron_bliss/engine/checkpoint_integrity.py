"""Which checkpoint folders are complete, and a one-line reason naming the file when one is not.

A save writes every rank's files, passes a barrier, and only then does rank 0 write
``complete.json`` (every file of the step folder with its size in bytes) and after it ``latest``
(``checkpoint.save_checkpoint``). Loading verifies a folder before DeepSpeed reads it: the files
of the record exist with their recorded sizes, ``meta.json`` parses, and every torch file's zip
directory (at its end) is readable, which catches truncated and overwritten files.

A run directory resumes from the newest step folder that verifies, whatever ``latest`` says
(``latest`` may be missing, name a partial folder, or lag behind a save killed between its record
and ``latest``); the folders skipped are named in a warning. A folder the user names explicitly
is never replaced by another: its first problem is the error.

Folders written before completion records existed have no ``complete.json``; they are accepted
(with the structural checks only) when ``latest`` names them or a later step, since DeepSpeed
wrote ``latest`` after their files, or when the user names them explicitly.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Any

from megatron_bliss.errors import InputError, MissingFileError
from megatron_bliss.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

TAG_PATTERN = re.compile(r"^global_step(\d+)$")
COMPLETION_RECORD = "complete.json"
META_FILE = "meta.json"
LATEST = "latest"


class CorruptCheckpoint(InputError):
    """A checkpoint folder that is incomplete or damaged; the message names the file."""


def step_folders(checkpoint_dir: Path) -> list[tuple[int, str]]:
    """``(step, tag)`` of every ``global_stepN`` folder, oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(
        (int(match.group(1)), entry.name)
        for entry in checkpoint_dir.iterdir()
        if entry.is_dir() and (match := TAG_PATTERN.match(entry.name))
    )


def has_step_folders(checkpoint_dir: str | Path) -> bool:
    """Whether a checkpoints directory holds any step folder (complete or not): a run with one
    resumes or stops, it never starts again from step 0 over them."""
    return bool(step_folders(Path(checkpoint_dir)))


def read_latest(checkpoint_dir: Path) -> str | None:
    path = checkpoint_dir / LATEST
    if not path.is_file():
        return None
    try:
        return path.read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def write_completion_record(folder: Path, step: int) -> dict[str, Any]:
    """Record every file under ``folder`` with its size; call once all ranks have written."""
    files = {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != COMPLETION_RECORD and not path.name.startswith(".")
    }
    record = {"step": int(step), "files": files}
    atomic_write_json(folder / COMPLETION_RECORD, record)
    return record


def read_meta(folder: Path) -> dict[str, Any]:
    """The folder's ``meta.json``, or one line naming it when it is missing or not JSON."""
    path = folder / META_FILE
    if not path.is_file():
        raise MissingFileError(f"{path}: checkpoint metadata not found")
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptCheckpoint(f"{path}: corrupt checkpoint metadata ({_reason(error)})") from None
    if not isinstance(meta, dict):
        raise CorruptCheckpoint(f"{path}: corrupt checkpoint metadata (not a JSON object)")
    return meta


def verify_folder(folder: Path, legacy_ok: bool) -> None:
    """Raise ``CorruptCheckpoint`` (or ``FileNotFoundError``) naming the first bad file."""
    record_path = folder / COMPLETION_RECORD
    if record_path.is_file():
        _check_record(folder, record_path)
    elif not legacy_ok:
        raise CorruptCheckpoint(
            f"{folder}: incomplete checkpoint (no {COMPLETION_RECORD}: its save did not finish)"
        )
    read_meta(folder)
    torch_files = sorted(folder.glob("*.pt"))
    if not any(path.name.endswith("model_states.pt") for path in torch_files):
        raise CorruptCheckpoint(f"{folder}: no *model_states.pt (not a DeepSpeed checkpoint)")
    for path in torch_files:
        _check_torch_file(path)


def _check_record(folder: Path, record_path: Path) -> None:
    try:
        files = json.loads(record_path.read_text())["files"]
        sizes = {str(name): int(size) for name, size in files.items()}
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CorruptCheckpoint(
            f"{record_path}: corrupt completion record ({_reason(error)})"
        ) from None
    for name, size in sizes.items():
        path = folder / name
        if not path.is_file():
            raise CorruptCheckpoint(f"{path}: missing (listed in {record_path.name})")
        actual = path.stat().st_size
        if actual != size:
            raise CorruptCheckpoint(
                f"{path}: truncated or overwritten ({actual} bytes, {size} when it was saved)"
            )


def _check_torch_file(path: Path) -> None:
    """torch.save writes a zip whose directory sits at the end: a cut file has none."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise CorruptCheckpoint(
            f"{path}: unreadable torch file, truncated or corrupt ({_reason(error)})"
        ) from None


def _reason(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text


def newest_complete(checkpoint_dir: Path) -> str:
    """The tag of the newest step folder that verifies; skipped ones are named in a warning,
    and when none verifies the error lists why."""
    latest = read_latest(checkpoint_dir)
    latest_match = TAG_PATTERN.match(latest or "")
    latest_step = int(latest_match.group(1)) if latest_match else None
    skipped = []
    if latest is not None and not (checkpoint_dir / latest).is_dir():
        skipped.append(f"{checkpoint_dir / LATEST} names missing step folder '{latest}'")
    folders = step_folders(checkpoint_dir)
    for step, tag in reversed(folders):
        legacy_ok = latest_step is not None and step <= latest_step
        try:
            verify_folder(checkpoint_dir / tag, legacy_ok)
        except (CorruptCheckpoint, FileNotFoundError) as problem:
            skipped.append(str(problem))
            continue
        if skipped:
            logger.warning(
                "%s: using %s, the newest complete checkpoint; skipped: %s",
                checkpoint_dir,
                tag,
                "; ".join(skipped),
            )
        return tag
    reasons = "; ".join(skipped) if skipped else "no step folder"
    raise CorruptCheckpoint(
        f"{checkpoint_dir}: no complete checkpoint among {len(folders)} step folder(s) ({reasons})"
    )


def invalidate(checkpoint_dir: Path, tag: str) -> None:
    """Before ``tag`` is written again (a run that fell back to an older checkpoint reaches it
    anew): its old record and a ``latest`` naming it would vouch for half-written files."""
    (checkpoint_dir / tag / COMPLETION_RECORD).unlink(missing_ok=True)
    if read_latest(checkpoint_dir) == tag:
        os.unlink(checkpoint_dir / LATEST)
