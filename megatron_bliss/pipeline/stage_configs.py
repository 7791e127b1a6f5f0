"""The config of each pipeline stage, built in one place for the preflight and the runner.

A training stage is the engine's ``PretrainConfig``: the pipeline's ``pretrain`` sections with the
stage's own values filled in (run directory, shard and selection, sequence length, steps, seed,
learning-rate multiplier). A selection stage is the selector's ``SelectConfig``: the pipeline's
``select`` values with the shared ones (sequence length, fraction, the round's seed) and what the
method carries over from earlier rounds (``Selector.carry_over``). The preflight builds the same
configs with the values known before any stage ran, so a stage never meets a config that the
preflight did not check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from megatron_bliss.config import from_dict, merge
from megatron_bliss.engine.config import PretrainConfig
from megatron_bliss.pipeline.config import PipelineConfig
from megatron_bliss.selection.base import EarlierRounds
from megatron_bliss.selection.config import SelectConfig, select_config
from megatron_bliss.selection.registry import get_selector_class


def train_stage_config(
    config: PipelineConfig,
    *,
    run_dir: str | Path,
    steps: int,
    lr_multiplier: float,
    shard: str,
    selection: str | Path,
    for_selection: bool = True,
    where: str = "pipeline.pretrain",
) -> PretrainConfig:
    """A training stage's PretrainConfig; ``for_selection``: the checkpoints feed a later round's
    selector, so they also hold what it reads (``Selector.exported_adam_layers``)."""
    stage = {
        "run_dir": str(run_dir),
        "data": {
            "sources": [{"prefix": shard, "selection": str(selection)}],
            "seq_length": config.seq_length,
            "tokenizer": config.tokenizer,
        },
        "train": {"train_steps": steps, "seed": config.seed},
        "schedule": {"lr_multiplier": lr_multiplier},
    }
    values = merge(config.pretrain_sections(), stage)
    typed = from_dict(PretrainConfig, values, where=where)
    if for_selection:
        exported = typed.checkpoint.adam_state_params
        layers = exported_adam_layers(config)
        typed.checkpoint.adam_state_params = list(dict.fromkeys([*exported, *layers]))
    return typed


def method_section(config: PipelineConfig, where: str = "pipeline.select") -> Any:
    """The method's ``select`` section as its selector's typed Config."""
    section = config.select.get(config.method) or {}
    selector_class = get_selector_class(config.method)
    return from_dict(selector_class.Config, section, where=f"{where}: {config.method}")


def exported_adam_layers(config: PipelineConfig) -> list[str]:
    """Layers whose AdamW moments every training stage saves for the method's later rounds."""
    if config.rounds() == 0:
        return []
    return get_selector_class(config.method).exported_adam_layers(method_section(config))


def select_stage_config(
    config: PipelineConfig, r: int, earlier: EarlierRounds | None, where: str = "pipeline.select"
) -> SelectConfig:
    """Round ``r``'s SelectConfig: the shared settings plus what ``earlier`` rounds hand over
    (none: only what the configuration itself says, as the preflight checks it)."""
    shared = {"seq_length": config.seq_length, "fraction": config.fraction, "seed": config.seed + r}
    if config.group_size is not None:
        shared["group_size"] = config.group_size
    values = merge(config.select, shared)
    if earlier is not None:
        carry = get_selector_class(config.method).carry_over(method_section(config), earlier)
        values = merge(values, {config.method: carry})
    return select_config(values, where)
