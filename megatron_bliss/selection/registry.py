"""Names of the selection methods and where they live (imported lazily: torch-heavy)."""

from __future__ import annotations

import importlib

SELECTORS: dict[str, str] = {
    "bliss": "megatron_bliss.selection.bliss:BlissSelector",
    "influence": "megatron_bliss.selection.influence:InfluenceSelector",
    "random": "megatron_bliss.selection.random_selector:RandomSelector",
    "dsir": "megatron_bliss.selection.dsir:DsirSelector",
    "perplexity": "megatron_bliss.selection.perplexity:PerplexitySelector",
    "mates": "megatron_bliss.selection.mates:MatesSelector",
    "reducible": "megatron_bliss.selection.reducible:ReducibleSelector",
}


def get_selector_class(method: str):
    if method not in SELECTORS:
        raise ValueError(f"unknown selection method '{method}' (known: {', '.join(SELECTORS)})")
    module_name, class_name = SELECTORS[method].split(":")
    return getattr(importlib.import_module(module_name), class_name)
