"""Where the package's own files and optional real data live.

* Shipped files: the default configs (``configs/*.yaml``) and DeepSpeed configs
  (``ds_configs/*.json``) are package data, found through ``importlib.resources`` whether the
  package runs from a checkout or from an installed wheel. A relative path such as
  ``configs/pretrain_tiny_cpu.yaml`` means the file in the current directory when there is one,
  else the shipped one (``resolve_shipped``), so commands work from any directory.
* Optional real data: ``$MEGATRON_BLISS_SHARED_DATA`` or ``../shared/data`` beside a checkout.
  The project never requires it: every command takes explicit paths, and tests make their own.
* ``REPO_ROOT``: the source checkout the package was imported from; meaningful only in a
  checkout (tests, benchmarks, launch scripts), never used to find shipped files.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_FOLDERS = ("configs", "ds_configs")


def shipped_path(relative: str | Path) -> Path:
    """The package's own copy of ``relative`` (e.g. ``ds_configs/cpu_zero2.json``)."""
    return Path(str(resources.files("megatron_bliss").joinpath(str(relative))))


def resolve_shipped(path: str | Path) -> Path:
    """``path`` as given when it exists or is absolute, else the shipped file of that name
    (``configs/...``, ``ds_configs/...``), else ``path`` unchanged (its reader says what is
    missing)."""
    candidate = Path(path)
    if candidate.exists() or candidate.is_absolute():
        return candidate
    if candidate.parts and candidate.parts[0] in SHIPPED_FOLDERS:
        shipped = shipped_path(candidate)
        if shipped.exists():
            return shipped
    return candidate


def shared_data_dir() -> Path | None:
    candidates = [
        os.environ.get("MEGATRON_BLISS_SHARED_DATA"),
        REPO_ROOT.parent / "shared" / "data",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None
