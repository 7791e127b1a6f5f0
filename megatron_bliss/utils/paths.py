"""Where optional real data lives: ``$MEGATRON_BLISS_SHARED_DATA`` or ``../shared/data``.

The project never requires it: every command takes explicit paths, and tests make their own data.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path | None:
    candidates = [
        os.environ.get("MEGATRON_BLISS_SHARED_DATA"),
        REPO_ROOT.parent / "shared" / "data",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None
