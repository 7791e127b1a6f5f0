"""Names of the selection methods and where they live (imported lazily: torch-heavy).

Adding a method is one module with a ``Selector`` subclass plus one line here; everything else
(``select --method``, its YAML section, the pipeline's rounds, ``compare``) asks the class what it
needs and what it carries between rounds (``selection/base.py``).
"""

from __future__ import annotations

import importlib

from megatron_bliss.errors import ConfigError

SELECTORS: dict[str, str] = {
    "bliss": "megatron_bliss.selection.bliss:BlissSelector",
    "influence": "megatron_bliss.selection.influence:InfluenceSelector",
    "random": "megatron_bliss.selection.random_selector:RandomSelector",
    "dsir": "megatron_bliss.selection.dsir:DsirSelector",
    "perplexity": "megatron_bliss.selection.perplexity:PerplexitySelector",
    "mates": "megatron_bliss.selection.mates:MatesSelector",
    "reducible": "megatron_bliss.selection.reducible:ReducibleSelector",
}


def ranks_by_content(method: str) -> bool:
    """Whether ``method``'s scores rank sequences by what they hold (unknown methods: yes)."""
    if method not in SELECTORS:
        return True
    return get_selector_class(method).ranks_by_content


def get_selector_class(method: str):
    """The ``Selector`` subclass registered as ``method`` (``module:Class``, imported now)."""
    if method not in SELECTORS:
        raise ConfigError(f"unknown selection method '{method}' (known: {', '.join(SELECTORS)})")
    module_name, class_name = SELECTORS[method].split(":")
    return getattr(importlib.import_module(module_name), class_name)
