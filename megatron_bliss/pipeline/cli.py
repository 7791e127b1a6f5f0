"""``megatron-bliss pipeline --config CFG.yaml [key=value ...]``: the multi-round loop.

    megatron-bliss pipeline --config configs/pipeline_tiny_cpu.yaml
    megatron-bliss pipeline --config configs/pipeline_pythia_1b.yaml run_dir=runs/bliss_1b

Rerunning the same command resumes: finished stages are skipped, a killed stage continues from its
own checkpoints, and a stage made by a different config stops the run with one line.

Before the first stage, ``preflight`` checks everything that can be checked without training
(every section, the method, the eval tasks, the input files), so a typo in a late stage's settings
stops the run at once instead of after hours of data preparation and warm-up.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from megatron_bliss.config import ConfigError, naming_override
from megatron_bliss.pipeline.config import PipelineConfig, load_pipeline_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline YAML")
    parser.add_argument("overrides", nargs="*", help="key=value or section.key=value")


def check_stage_sections(config: PipelineConfig, where: str) -> None:
    """The pretrain and select sections as the stages will build them (stage values stand-ins)."""
    from megatron_bliss.config import from_dict, merge
    from megatron_bliss.engine.config import PretrainConfig, validate_static
    from megatron_bliss.selection.cli import SelectConfig, method_config, validate_sections

    sections = {k: v for k, v in config.pretrain.items() if k != "launcher"}
    stage = {"data": {"prefix": "preflight", "seq_length": config.seq_length}}
    pretrain = from_dict(PretrainConfig, merge(sections, stage), where=f"{where}: pretrain")
    validate_static(pretrain, where=f"{where}: pretrain")
    shared = {"seq_length": config.seq_length, "fraction": config.fraction, "seed": config.seed}
    select = from_dict(SelectConfig, merge(config.select, shared), where=f"{where}: select")
    validate_sections(select, f"{where}: select")
    if config.rounds() > 0:
        method_config(select, config.method, f"{where}: select")


def check_inputs(config: PipelineConfig) -> None:
    """Files the stages will read: named now rather than when their stage is reached."""
    from megatron_bliss.data.readers import expand_inputs
    from megatron_bliss.data.target_set import FORMATS

    if config.target_format not in FORMATS:
        raise ConfigError(f"target_format '{config.target_format}': expected one of {FORMATS}")
    if config.rounds() > 0 and config.target_data and not Path(config.target_data).is_file():
        raise FileNotFoundError(f"{config.target_data}: target_data file not found")
    if config.target_heldout_fraction and not 0 < config.target_heldout_fraction < 1:
        raise ConfigError(
            f"target_heldout_fraction must be in [0, 1), got {config.target_heldout_fraction}"
        )
    if config.prepare.corpus:
        for inputs in (
            config.prepare.corpus,
            config.prepare.warmup_corpus,
            config.prepare.valid_corpus,
        ):
            if inputs:
                expand_inputs(inputs)
    else:
        from megatron_bliss.data.pool import require_indexed_files

        for shard in config.shards[: config.rounds() + 1]:
            require_indexed_files(shard, what="shard file")
    if config.eval.enabled:
        from megatron_bliss.eval.harness import parse_task_list

        parse_task_list(config.eval.tasks)
        if config.eval.ppl_data and not Path(config.eval.ppl_data).is_file():
            raise FileNotFoundError(f"{config.eval.ppl_data}: eval.ppl_data file not found")
        task_data = config.eval.task_data
        if task_data not in (None, "auto") and not Path(task_data).is_dir():
            raise FileNotFoundError(f"{task_data}: eval.task_data folder not found")


def preflight(config: PipelineConfig, where: str, overrides: list[str] | None = None) -> None:
    """Stop with one line now for anything that would stop a later stage."""
    try:
        check_stage_sections(config, where)
    except ConfigError as error:
        raise naming_override(error, overrides) from None
    check_inputs(config)


def run(args: argparse.Namespace) -> int:
    from megatron_bliss.pipeline.runner import run_pipeline

    config = load_pipeline_config(args.config, args.overrides)
    preflight(config, args.config, args.overrides)
    run_pipeline(config)
    return 0
