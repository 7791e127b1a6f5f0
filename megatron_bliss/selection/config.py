"""The configuration of ``megatron-bliss select``: shared settings plus one section per method.

A select YAML holds the settings every method shares (sequence length, stand-in target, fraction,
seed, ...) and, beside them, a section named after any registered method (``bliss:``, ``mates:``
...). Each section is validated by that selector's own ``Config`` dataclass through the registry,
so adding a method adds its section without touching this file.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_bliss.config import (
    ConfigError,
    check_known_keys,
    from_dict,
    merge,
    naming_override,
    parse_overrides,
    read_yaml,
)
from megatron_bliss.selection.registry import SELECTORS, get_selector_class

logger = logging.getLogger(__name__)


@dataclass
class SelectConfig:
    """What every method shares; ``methods`` holds each given section as its selector's Config."""

    seq_length: int = 1024
    """Sequence length of the pool view of the shard (docs/formats.md: sequence pool)."""
    target_preset: str = "pythia-1b"
    """Preset of the model being pretrained (proxies follow its family); also the stand-in
    target built when no --target-model is given."""
    target_warmup_steps: int = 200
    """Stand-in target only: plain training steps on random pool sequences."""
    target_warmup_lr: float = 1e-3
    target_warmup_batch_size: int = 16
    target_max_length: int = 1024
    """Target-set examples are truncated (from the left) to this many tokens."""
    target_limit: int | None = None
    """Use only the first N target-set examples (none: all)."""
    device: str = "auto"
    """``auto``: cuda:LOCAL_RANK when available, else cpu."""
    fraction: float = 0.2
    seed: int = 0
    gumbel_temperature: float = 0.0
    group_size: int | None = None
    """Ranks that train the selector in a multi-rank job (methods with ``trains_on_group``; the
    first ``group_size`` ranks, ``selection/group.py``); none: the ranks of one node. Every rank
    scores."""
    methods: dict[str, Any] = field(default_factory=dict)
    """Typed Config of each method section given (YAML: a top-level key per method)."""

    def method_config(self, method: str) -> Any:
        """The typed Config of ``method``: its section, else the selector's defaults."""
        if method in self.methods:
            return self.methods[method]
        return from_dict(get_selector_class(method).Config, {}, where=method)


SHARED_KEYS = tuple(f.name for f in dataclasses.fields(SelectConfig) if f.name != "methods")


def select_config(values: dict[str, Any], where: str = "config") -> SelectConfig:
    """A SelectConfig from a mapping: shared keys, and one section per registered method, each
    checked by that method's Config (unknown keys and bad values stop with one line)."""
    check_known_keys(values, [*SHARED_KEYS, *SELECTORS], where)
    shared = {k: v for k, v in values.items() if k not in SELECTORS}
    config = from_dict(SelectConfig, shared, where)
    for method, section in values.items():
        if method not in SELECTORS or not section:
            continue
        typed = _section(method, section, where)
        if typed is not None:
            config.methods[method] = typed
    return config


def _section(method: str, section: Any, where: str) -> Any:
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: {method}: expected a mapping, got {section!r}")
    try:
        selector_class = get_selector_class(method)
    except ImportError:
        logger.warning("%s: section '%s' not checked (selector not importable)", where, method)
        return None
    return from_dict(selector_class.Config, section, where=f"{where}: {method}")


def as_dict(config: SelectConfig) -> dict[str, Any]:
    """The YAML form of ``config``: shared keys and a section per method given."""
    values = {k: v for k, v in dataclasses.asdict(config).items() if k != "methods"}
    values.update({name: dataclasses.asdict(section) for name, section in config.methods.items()})
    return values


def load_select_config(path: str | Path | None, overrides: list[str] | None = None) -> SelectConfig:
    """Defaults, then the YAML file, then ``key=value`` overrides."""
    data = read_yaml(path) if path else {}
    data = merge(data, parse_overrides(overrides or []))
    try:
        return select_config(data, str(path or "config"))
    except ConfigError as error:
        raise naming_override(error, overrides) from None


def with_overrides(config: SelectConfig, overrides: list[str]) -> SelectConfig:
    """``config`` with ``key=value`` overrides applied (and checked again)."""
    try:
        return select_config(merge(as_dict(config), parse_overrides(overrides)))
    except ConfigError as error:
        raise naming_override(error, overrides) from None
