"""A pretrain YAML's ``selection:`` section: the multi-round recipe that the launch scripts run.

    bash launch_scripts/pretrain_tiny_cpu.sh                # plain pretraining (enabled: false)
    SELECT=bliss bash launch_scripts/pretrain_tiny_cpu.sh   # warm-up + the rounds, one SPMD job
    SELECT=none  ...                                        # plain pretraining, whatever the YAML

The section holds the pipeline's selection settings (``PipelineConfig``: ``method``,
``num_rounds``, ``warmup_steps``, ``warmup_fraction``, ``round_steps``, ``fraction``,
``lr_round_factor``, ``decay_steps``, ``shards`` or ``prepare``, the target set, ``select`` and
``eval``) plus ``enabled`` and ``pretrain`` (what the recipe's training stages change, e.g. a
constant schedule); the rest of the YAML is the pipeline's ``pretrain`` part. Values both
need are written once, in the pretrain part: ``run_dir``, ``data.seq_length``,
``data.tokenizer`` and ``train.seed``; ``data.prefix`` and ``train.train_steps`` are what each
stage sets itself. Without ``shards`` (and ``prepare.corpus``) ``data.prefix`` is dealt once,
on rank 0, into ``num_rounds + 1`` shards under ``RUN_DIR/data/`` (shard 0: the warm-up's).

``SELECT=METHOD`` enables the recipe with that method, ``SELECT=none`` disables it; unset, the
section's ``enabled`` decides. ``SELECTIONS_FROM=RUN_DIR`` (the section's ``selections_from``)
enables it too: every round trains on that run's selection of the round (its method is the
recipe's unless ``SELECT`` names one), on the shards those selections index
(``pipeline/selections_from.py``).
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from pathlib import Path
from typing import Any

from megatron_bliss import exit_codes
from megatron_bliss.config import from_dict, merge, parse_overrides, read_yaml
from megatron_bliss.engine.config import RECIPE_SECTION
from megatron_bliss.errors import ConfigError, UserError
from megatron_bliss.exit_codes import Interrupted
from megatron_bliss.pipeline.config import PipelineConfig, check_pipeline_config
from megatron_bliss.pipeline.selections_from import with_source_shards

logger = logging.getLogger(__name__)

FROM_PRETRAIN = {
    "run_dir": ("run_dir",),
    "seq_length": ("data", "seq_length"),
    "tokenizer": ("data", "tokenizer"),
    "seed": ("train", "seed"),
}
"""Pipeline fields taken from the pretrain part (never written in the section)."""

SET_PER_STAGE = (("data", "prefix"), ("data", "selection"), ("data", "sources"))
"""Pretrain keys each stage sets itself (its shard and selection; train_steps is overridden)."""

NOT_IN_SECTION = ("compare", "reuse_warmup")


def wanted_method(section: dict[str, Any], select: str | None) -> str | None:
    """The method the recipe runs, or None for plain pretraining: ``SELECT`` when set (``none``
    turns the recipe off), else the section's ``method`` when it is ``enabled``."""
    if select is not None and select.strip():
        choice = select.strip()
        return None if choice.lower() == "none" else choice
    if section and section.get("selections_from"):
        return _method_of_run(section["selections_from"]) or section.get("method", "bliss")
    if not section or not section.get("enabled", False):
        return None
    return section.get("method", "bliss")


def recipe_config(pretrain: dict[str, Any], method: str, where: str = "config") -> PipelineConfig:
    """The ``PipelineConfig`` of a pretrain YAML's mapping (with its ``selection`` section)
    running ``method``: the one place where the two configs meet."""
    section = dict(pretrain.get(RECIPE_SECTION) or {})
    section.pop("enabled", None)
    for key in (*FROM_PRETRAIN, *NOT_IN_SECTION):
        if key in section:
            origin = ".".join(FROM_PRETRAIN.get(key, ("the pipeline",)))
            raise ConfigError(f"{where}: {RECIPE_SECTION}.{key}: set by {origin}, not here")
    stages = section.pop("pretrain", None) or {}
    values: dict[str, Any] = {**section, "method": method}
    for key, path in FROM_PRETRAIN.items():
        found = _get(pretrain, path)
        if found is not None:
            values[key] = found
    values["run_dir"] = run_dir_of(pretrain)
    values["pretrain"] = merge(_pretrain_part(pretrain), stages)
    config = from_dict(PipelineConfig, values, where=f"{where}: {RECIPE_SECTION}")
    config = with_source_shards(config, f"{where}: {RECIPE_SECTION}")
    check_pipeline_config(config, f"{where}: {RECIPE_SECTION}")
    return config


def needs_split(pretrain: dict[str, Any]) -> bool:
    """True when the recipe makes its shards from ``data.prefix`` (neither ``shards`` nor
    ``prepare.corpus`` given)."""
    section = pretrain.get(RECIPE_SECTION) or {}
    given = section.get("shards") or (section.get("prepare") or {}).get("corpus")
    return not given and not section.get("selections_from")


def split_for_rounds(pretrain: dict[str, Any], where: str = "config") -> list[str]:
    """``data.prefix`` dealt into one shard per round plus the warm-up's, once (a marker records
    the source and count; a rerun reuses the shards)."""
    from megatron_bliss.data.shards import split_indexed
    from megatron_bliss.pipeline.stages import StageMarker

    prefix = _get(pretrain, ("data", "prefix"))
    rounds = (pretrain.get(RECIPE_SECTION) or {}).get("num_rounds")
    if not prefix or rounds is None:
        raise ConfigError(
            f"{where}: {RECIPE_SECTION} without shards needs data.prefix and num_rounds"
        )
    data_dir = Path(run_dir_of(pretrain)) / "data"
    marker = StageMarker(data_dir, "split", {"prefix": str(prefix), "shards": int(rounds) + 1})
    if marker.done():
        return list(marker.result()["shards"])
    shards = split_indexed(str(prefix), int(rounds) + 1, str(data_dir / "recipe"))
    marker.complete({"shards": shards})
    logger.info("recipe: %s dealt into %d shards", prefix, len(shards))
    return shards


def run_recipe(config_path: str, overrides: list[str]) -> int | None:
    """Run the recipe of ``config_path`` (plus ``overrides``) on every rank of this job; the exit
    code, or None when the YAML asks for plain pretraining (no section, or ``SELECT=none``).
    Errors end in one line, as ``megatron-bliss`` commands do."""
    try:
        pretrain = merge(read_yaml(config_path), parse_overrides(overrides))
        if os.environ.get("SELECTIONS_FROM"):
            source = os.environ["SELECTIONS_FROM"]
            pretrain = merge(pretrain, {RECIPE_SECTION: {"selections_from": source}})
        method = wanted_method(pretrain.get(RECIPE_SECTION) or {}, os.environ.get("SELECT"))
        if method is None:
            return None
        _run(pretrain, method, config_path, overrides)
    except Interrupted as stopped:
        print(f"recipe: {stopped}", file=sys.stderr, flush=True)
        return exit_codes.INTERRUPTED
    except UserError as error:
        print(f"recipe: error: {error}", file=sys.stderr, flush=True)
        return exit_codes.BAD_INPUT
    return exit_codes.FINISHED


def _run(pretrain: dict[str, Any], method: str, where: str, overrides: list[str]) -> None:
    from megatron_bliss.pipeline.overlap import guarded, is_selection_part, selection_ranks
    from megatron_bliss.pipeline.runner import (
        run_pipeline,
        run_selection_part,
        training_device_type,
    )
    from megatron_bliss.pipeline.world import PipelineWorld

    section = pretrain.get(RECIPE_SECTION) or {}
    ranks = selection_ranks(bool(section.get("overlap")), section.get("group_size"), where)
    world = PipelineWorld.join(training_device_type(pretrain), ranks)
    with guarded(world):
        if is_selection_part(world):  # the training part splits, prepares and posts the config
            run_selection_part(world)
            return
        if needs_split(pretrain):
            world.use_run_dir(run_dir_of(pretrain))
            shards = world.on_main("split shards", lambda: split_for_rounds(pretrain, where))
            pretrain = merge(pretrain, {RECIPE_SECTION: {"shards": shards}})
        config = recipe_config(pretrain, method, where)
        logger.info("recipe: %s, %d rounds, run dir %s", method, config.rounds(), config.run_dir)
        run_pipeline(config, where=where, overrides=overrides, world=world)


def run_dir_of(pretrain: dict[str, Any]) -> str:
    """The pretrain part's run directory (``PretrainConfig``'s default when unset): the recipe's."""
    from megatron_bliss.engine.config import PretrainConfig

    return str(pretrain.get("run_dir") or PretrainConfig.run_dir)


def _pretrain_part(pretrain: dict[str, Any]) -> dict[str, Any]:
    """The pretrain YAML as the pipeline's ``pretrain`` part: without the section, the values the
    pipeline owns and what each stage sets; training runs in this job's own processes."""
    part = copy.deepcopy({k: v for k, v in pretrain.items() if k != RECIPE_SECTION})
    for path in (*FROM_PRETRAIN.values(), *SET_PER_STAGE, ("train", "train_steps")):
        _pop(part, path)
    part["launcher"] = {"type": "inprocess"}
    return part


def _get(values: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(values, dict) or key not in values:
            return None
        values = values[key]
    return values


def _pop(values: dict[str, Any], path: tuple[str, ...]) -> None:
    *parents, last = path
    for key in parents:
        values = values.get(key)
        if not isinstance(values, dict):
            return
    values.pop(last, None)


def _method_of_run(run_dir: str) -> str | None:
    """The method a pipeline run selected with (its ``config.yaml``), None when unknown."""
    path = Path(run_dir) / "config.yaml"
    return read_yaml(path).get("method") if path.exists() else None
