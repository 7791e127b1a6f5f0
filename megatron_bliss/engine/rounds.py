"""Which settings a round may change when training continues in the running engine.

The DeepSpeed engine fixes the model, the batch shape, the precision, the ZeRO layout and the
optimizer's hyperparameters when it is built. What the engine reads afresh at every step (the
data, the step count, the schedule and learning rates) or per round (where it writes, what it
logs and checkpoints) may change from one round to the next; anything else needs a new engine,
so the hook's config is checked before the round starts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from megatron_bliss.engine.config import PretrainConfig
from megatron_bliss.errors import ConfigError

IN_PLACE_CHANGES = (
    "run_dir",
    "data.sources",
    "data.prefix",
    "data.selection",
    "data.valid_prefix",
    "data.valid_sets",
    "data.cache_dir",
    "train.train_steps",
    "optimizer.lr",
    "optimizer.min_lr",
    "schedule",
    "checkpoint",
    "logging",
)
"""Dotted config fields (a section name covers all of it) a next round may set differently."""


def fixed_changes(running: PretrainConfig, following: PretrainConfig) -> list[str]:
    """The dotted fields where ``following`` differs from ``running`` outside ``IN_PLACE_CHANGES``."""
    return sorted(
        _differences(dataclasses.asdict(running), dataclasses.asdict(following), prefix="")
    )


def check_in_place(running: PretrainConfig, following: PretrainConfig) -> None:
    """Raise ``ConfigError`` naming the fields the running engine cannot change."""
    changed = fixed_changes(running, following)
    if changed:
        raise ConfigError(
            f"{following.run_dir}: the next round cannot continue in the running engine: "
            f"{', '.join(changed)} differ{'s' if len(changed) == 1 else ''} from the running "
            "round (start a new pretrain for it)"
        )


def _differences(old: Any, new: Any, prefix: str) -> list[str]:
    if prefix.rstrip(".") in IN_PLACE_CHANGES:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new)):
            found += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return [] if old == new else [prefix.rstrip(".")]
