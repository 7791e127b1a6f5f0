"""Training on another run's selections (``selections_from``, ``SELECTIONS_FROM=RUN_DIR``).

The paper trains its 2.8B model on the data selected in the 1B setting: the selection is paid for
once, by the smaller run, and reused. Here every round r of this run takes ``round_r/`` of the
source run (``selection.npy`` and ``selection.json``, and ``scores.npy`` for the report) instead
of running a selector, and trains on the shard that selection indexes (its ``data_prefix``), so
the indices mean the same sequences. The warm-up (round 0) reuses the source's random warm-up
subset too. This run records no selection FLOPs: they were spent by the source run.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from megatron_bliss.errors import ConfigError, MissingFileError

COPIED = ("selection.npy", "selection.json", "scores.npy")


def source_meta(source: str | Path, r: int) -> dict[str, Any]:
    """``selection.json`` of round ``r`` of the source run (a clear stop when it has none)."""
    path = Path(source) / f"round_{r}" / "selection.json"
    if not path.exists():
        raise MissingFileError(f"{path}: selections_from run has no selection for round {r}")
    return json.loads(path.read_text())


def source_rounds(source: str | Path) -> int:
    """How many selection rounds (after the warm-up) the source run finished selecting."""
    r = 0
    while (Path(source) / f"round_{r + 1}" / "selection.json").exists():
        r += 1
    return r


def with_source_shards(config, where: str):
    """``config`` with the shards (and, when unset, the round count) of its ``selections_from``
    run; unchanged without one."""
    if not config.selections_from:
        return config
    if config.shards or config.prepare.corpus:
        raise ConfigError(
            f"{where}: selections_from takes the shards of the source run; remove "
            "'shards' / 'prepare.corpus'"
        )
    rounds = config.num_rounds if config.num_rounds is not None else source_rounds(
        config.selections_from
    )  # fmt: skip
    shards = []
    for r in range(rounds + 1):
        meta = source_meta(config.selections_from, r)
        if int(meta["seq_length"]) != config.seq_length:
            raise ConfigError(
                f"{where}: seq_length={config.seq_length}, but the selections of "
                f"{config.selections_from} index sequences of {meta['seq_length']} tokens"
            )
        shards.append(str(meta["data_prefix"]))
    return dataclasses.replace(config, shards=shards, num_rounds=rounds)


def copy_selection(source: str | Path, r: int, round_dir: Path) -> dict[str, Any]:
    """Round ``r``'s selection files of the source run, copied into ``round_dir`` (each under a
    temporary name, then renamed); the stage's result."""
    meta = source_meta(source, r)
    round_dir.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        found = Path(source) / f"round_{r}" / name
        if found.exists():
            partial = round_dir / f".{name}.partial"
            shutil.copyfile(found, partial)
            partial.replace(round_dir / name)
    return {"flops": {}, "num_selected": int(meta["num_selected"]), "from": str(source)}
