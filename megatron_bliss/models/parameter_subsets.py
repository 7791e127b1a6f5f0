"""Named subsets of a model's linear layers, matched by module-name suffix.

Influence Distillation takes per-sample gradients on a subset of layers (``down_proj``: the MLP
down-projections, ``mlp.dense_4h_to_h`` in GPT-NeoX and ``mlp.down_proj`` in LLaMA), and the
engine exports the optimizer's second moments of the same layers so they can precondition those
gradients. Both sides resolve the subset here, so they always agree on which parameters it holds.
"""

from __future__ import annotations

import torch

SUBSET_SUFFIXES = {"down_proj": ("mlp.dense_4h_to_h", "mlp.down_proj")}
"""Subset names and the module-name suffixes they stand for (one per model family)."""


def subset_suffixes(subsets: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Module-name suffixes of one subset name or a list of them (an unknown name is a suffix)."""
    names = [subsets] if isinstance(subsets, str) else list(subsets)
    suffixes: list[str] = []
    for name in names:
        for suffix in SUBSET_SUFFIXES.get(name, (name,)):
            if suffix not in suffixes:
                suffixes.append(suffix)
    return tuple(suffixes)


def matching_linear_modules(
    model: torch.nn.Module, subsets: str | list[str] | tuple[str, ...]
) -> list[tuple[str, torch.nn.Linear]]:
    """``(name, module)`` of every ``nn.Linear`` whose name ends with a subset suffix, in model
    order (the same order on every rank, which ZeRO-3 collectives over them rely on)."""
    suffixes = subset_suffixes(subsets)
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.endswith(suffixes)
    ]
