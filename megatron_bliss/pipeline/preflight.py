"""Everything a pipeline can check before its first stage, so a typo in a late stage's settings
stops the run at once instead of after hours of data preparation and warm-up.

``run_pipeline`` and ``run_compare`` call ``preflight`` themselves, so a pipeline started from
Python is checked exactly like one started by ``megatron-bliss pipeline``.
"""

from __future__ import annotations

from pathlib import Path

from megatron_bliss.config import naming_override
from megatron_bliss.errors import ConfigError, MissingFileError
from megatron_bliss.pipeline.config import PipelineConfig


def check_stage_sections(config: PipelineConfig, where: str) -> None:
    """The training and selection configs as the stages will build them (``stage_configs``)."""
    from megatron_bliss.engine.config import validate_static
    from megatron_bliss.pipeline.stage_configs import select_stage_config, train_stage_config
    from megatron_bliss.selection.registry import get_selector_class

    select = select_stage_config(config, 1, None, where=f"{where}: select")
    if config.rounds() > 0 and not config.selections_from:  # else no selector runs here
        select.method_config(config.method)
        if get_selector_class(config.method).needs_target_set and not config.target_data:
            raise ConfigError(f"{where}: method '{config.method}' needs a target set (target_data)")
    round_dir = Path(config.run_dir) / "round_0"
    pretrain = train_stage_config(
        config, run_dir=round_dir, steps=config.warmup_steps, lr_multiplier=1.0,
        shard=config.shards[0] if config.shards else "preflight",
        selection=round_dir / "selection.npy", for_selection=config.rounds() > 0,
        where=f"{where}: pretrain",
    )  # fmt: skip
    validate_static(pretrain, where=f"{where}: pretrain")


def check_inputs(config: PipelineConfig) -> None:
    """Files the stages will read: named now rather than when their stage is reached."""
    from megatron_bliss.data.readers import expand_inputs
    from megatron_bliss.data.target_set import FORMATS

    if config.target_format not in FORMATS:
        raise ConfigError(f"target_format '{config.target_format}': expected one of {FORMATS}")
    if config.rounds() > 0 and config.target_data and not Path(config.target_data).is_file():
        raise MissingFileError(f"{config.target_data}: target_data file not found")
    if config.target_heldout_fraction and not 0 < config.target_heldout_fraction < 1:
        raise ConfigError(
            f"target_heldout_fraction must be in [0, 1), got {config.target_heldout_fraction}"
        )
    if config.prepare.corpus:
        prepare = config.prepare
        for inputs in (prepare.corpus, prepare.warmup_corpus, prepare.valid_corpus):
            if inputs:
                expand_inputs(inputs)
    else:
        from megatron_bliss.data.pool import require_indexed_files

        for shard in config.shards[: config.rounds() + 1]:
            require_indexed_files(shard, what="shard file")
    if config.eval.enabled:
        check_eval_inputs(config)


def check_eval_inputs(config: PipelineConfig) -> None:
    from megatron_bliss.eval.harness import parse_task_list

    parse_task_list(config.eval.tasks)
    if config.eval.ppl_data and not Path(config.eval.ppl_data).is_file():
        raise MissingFileError(f"{config.eval.ppl_data}: eval.ppl_data file not found")
    task_data = config.eval.task_data
    if task_data not in (None, "auto") and not Path(task_data).is_dir():
        raise MissingFileError(f"{task_data}: eval.task_data folder not found")


def preflight(
    config: PipelineConfig, where: str = "pipeline", overrides: list[str] | None = None
) -> None:
    """Stop with one line now for anything that would stop a later stage."""
    try:
        check_stage_sections(config, where)
    except ConfigError as error:
        raise naming_override(error, overrides) from None
    check_inputs(config)
