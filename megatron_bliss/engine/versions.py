"""The DeepSpeed versions this project's workarounds were tested with, checked at start.

``engine/checkpoint.py`` undoes two slips of DeepSpeed's ZeRO-3 universal-checkpoint loader
(``repair_universal_optimizer_state``), calls ``ds_to_universal`` with its argument namespace, and
``engine/safe_load.py`` allow-lists the classes DeepSpeed pickles into its shards. All of this
follows DeepSpeed's internals, so another DeepSpeed may need other repairs or types: ``pretrain``
and ``make install`` stop with one line outside ``TESTED_DEEPSPEED`` (inclusive) instead of
resuming wrongly. ``constraints.txt`` installs a tested version;
``MEGATRON_BLISS_UNTESTED_DEEPSPEED=1`` runs anyway (at your own risk: re-run the elastic-resume
and checkpoint tests first).

    python -m megatron_bliss.engine.versions     # exit 2 with the line when outside the range
"""

from __future__ import annotations

import os
import sys
from importlib import metadata

from packaging.version import Version

from megatron_bliss.config import ConfigError

TESTED_DEEPSPEED = ("0.19.8", "0.19.8")
OVERRIDE = "MEGATRON_BLISS_UNTESTED_DEEPSPEED"


def check_deepspeed_version(installed: str | None = None) -> None:
    """One line (``ConfigError``) when the installed DeepSpeed is outside the tested range."""
    if os.environ.get(OVERRIDE) == "1":
        return
    installed = installed or metadata.version("deepspeed")
    low, high = TESTED_DEEPSPEED
    if not Version(low) <= Version(installed) <= Version(high):
        tested = low if low == high else f"{low} to {high}"
        raise ConfigError(
            f"deepspeed {installed} is installed, but the DeepSpeed workarounds in "
            f"engine/checkpoint.py and engine/safe_load.py were tested with {tested} only: "
            f"install the pinned versions (pip install -c constraints.txt ...) or set "
            f"{OVERRIDE}=1 to run anyway"
        )


if __name__ == "__main__":
    try:
        check_deepspeed_version()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
