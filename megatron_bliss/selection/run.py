"""One selection run: fit a method on a shard, score it, keep a fraction (what ``select`` does).

``run_selection`` checks every input before any training (settings, shard, tokenizer, target set,
target model) and creates the run directory only then. It asks the selector class what it needs:
methods that never look at the target model get none loaded (``uses_target_model``), a method
that needs a target set stops at once without one (``needs_target_set``), and without a
``--target-model`` a stand-in target is warmed up (``stand_in.py``). Outputs (docs/formats.md):
``RUN_DIR/config.yaml`` (resolved), ``scores.npy``, ``selection.npy``, ``selection.json`` and, for
learned scorers, ``score_model/``. The pipeline calls it once per round.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from megatron_bliss.engine.distributed import host_group, rank, world_size
from megatron_bliss.errors import ConfigError, InputError
from megatron_bliss.selection.config import SelectConfig, load_select_config, with_overrides
from megatron_bliss.selection.registry import get_selector_class
from megatron_bliss.utils.device import resolve_device
from megatron_bliss.utils.dirs import check_dir_creatable, ensure_dir
from megatron_bliss.utils.io import atomic_write_text

logger = logging.getLogger(__name__)


def tokenizer_of_target(target_model: Path):
    """The tokenizer saved with a --target-model: in a Hugging Face directory, or the run's copy
    for a DeepSpeed checkpoint; None when there is none."""
    from megatron_bliss.data.tokenizer import holds_tokenizer, load_tokenizer

    if holds_tokenizer(target_model):
        return load_tokenizer(str(target_model))
    from megatron_bliss.engine.export import checkpoint_tokenizer

    source = checkpoint_tokenizer(target_model)
    if source is None:
        return None
    logger.info("tokenizer: %s (the --target-model checkpoint's run)", source)
    return load_tokenizer(source)


def check_tokenizer_fits(pool, tokenizer) -> None:
    """The target set must be tokenised like the shard. Ids beyond the tokenizer are certainly
    another tokenizer (an error); a manifest hash that differs probably is (a warning: the same
    tokenizer loaded from a directory or a JSON file can hash differently)."""
    from megatron_bliss.data.tokenizer import tokenizer_hash

    top = pool.max_token_id()
    if top >= len(tokenizer):
        raise InputError(
            f"{pool.prefix}: holds token id {top} but the tokenizer has only {len(tokenizer)} "
            "tokens (the shard was made with another tokenizer; pass that one as --tokenizer)"
        )
    manifest = Path(pool.prefix + ".json")
    try:
        record = json.loads(manifest.read_text())
        recorded = record.get("tokenizer_hash")
    except (OSError, ValueError, AttributeError):
        return
    if recorded and recorded != tokenizer_hash(tokenizer):
        logger.warning(
            "%s: made with tokenizer %s, which differs from the one given here",
            manifest,
            record.get("tokenizer", recorded[:12]),
        )


def resolve_config(
    config: SelectConfig | str | Path | None,
    overrides: list[str] | None = None,
    **values: Any,
) -> SelectConfig:
    """The SelectConfig of a run: a config or YAML path, then overrides, then the command-line
    values that are not None (``fraction``, ``seed``, ``gumbel_temperature``)."""
    if not isinstance(config, SelectConfig):
        config = load_select_config(config, overrides)
    elif overrides:
        config = with_overrides(config, overrides)
    return dataclasses.replace(config, **{k: v for k, v in values.items() if v is not None})


@dataclasses.dataclass
class Inputs:
    """Everything a selector's context holds, checked before any training."""

    pool: Any
    device: torch.device
    tokenizer: Any
    target_set: Any
    target_model: torch.nn.Module | str | Path | None


def check_inputs(method: str, config: SelectConfig, selector_class, **given: Any) -> Inputs:
    """The shard, device, tokenizer, target set and target model of a run, or one line saying
    which is wrong (nothing is trained or created before this returns)."""
    from megatron_bliss.data.pool import SequencePool
    from megatron_bliss.data.target_set import TargetSet
    from megatron_bliss.data.tokenizer import load_tokenizer
    from megatron_bliss.selection.rule import check_selection_settings

    check_selection_settings(config.fraction, config.gumbel_temperature)
    check_dir_creatable(given["run_dir"], "--run-dir")
    target_data, target_model = given["target_data"], given["target_model"]
    if selector_class.needs_target_set and target_data is None:
        raise ConfigError(f"{method}: needs a target set (--target-data)")
    pool = SequencePool(given["data_prefix"], config.seq_length).require_sequences()
    device = resolve_device(config.device, "device")
    tokenizer = given["tokenizer"]
    if isinstance(tokenizer, str | Path):
        tokenizer = load_tokenizer(str(tokenizer))
    if tokenizer is None and isinstance(target_model, str | Path):
        tokenizer = tokenizer_of_target(Path(target_model))
    if tokenizer is not None:
        check_tokenizer_fits(pool, tokenizer)
    target_set = None
    if target_data is not None:
        if tokenizer is None:
            raise ConfigError("--target-data needs --tokenizer (or a --target-model with one)")
        target_set = TargetSet.from_jsonl(
            target_data, tokenizer, given["target_format"], config.target_max_length,
            config.target_limit,
        )  # fmt: skip
    if not selector_class.uses_target_model:
        if target_model is not None:
            logger.info("%s does not use --target-model: not loading %s", method, target_model)
        target_model = None
    elif target_model is None and tokenizer is None:
        raise ConfigError("select without --target-model needs --tokenizer")
    return Inputs(pool, device, tokenizer, target_set, target_model)


def run_selection(
    method: str,
    config: SelectConfig | str | Path | None,
    *,
    data_prefix: str,
    run_dir: str | Path,
    target_data: str | Path | None = None,
    target_format: str = "documents",
    tokenizer: Any = None,
    target_model: str | Path | torch.nn.Module | None = None,
    overrides: list[str] | None = None,
    fraction: float | None = None,
    seed: int | None = None,
    gumbel_temperature: float | None = None,
) -> np.ndarray:
    """Fit ``method`` on the shard, score it, write the selection; returns ``selection.npy``."""
    from megatron_bliss.selection.stand_in import stand_in_target

    config = resolve_config(
        config, overrides, fraction=fraction, seed=seed, gumbel_temperature=gumbel_temperature
    )
    selector_class = get_selector_class(method)
    selector_config = config.method_config(method)
    inputs = check_inputs(
        method, config, selector_class, run_dir=run_dir, data_prefix=data_prefix,
        target_data=target_data, target_format=target_format, tokenizer=tokenizer,
        target_model=target_model,
    )  # fmt: skip
    group = selection_group(selector_class, config)
    inputs.target_model = target_for_this_rank(inputs.target_model, group, inputs.device)
    run_dir = ensure_dir(run_dir, "--run-dir")  # only once the inputs have been checked
    if inputs.target_model is None and selector_class.uses_target_model and group.fits_here:
        inputs.target_model = stand_in_target(
            config, inputs.pool, inputs.tokenizer, run_dir, inputs.device
        )
    _write_resolved(run_dir, config, method, selector_config, data_prefix, target_data)
    selector = selector_class(selector_config, _context(config, inputs, run_dir))
    return _fit_score_select(selector, group, config, method, data_prefix, run_dir)


def _context(config: SelectConfig, inputs: Inputs, run_dir: Path):
    from megatron_bliss.selection.base import SelectionContext

    return SelectionContext(
        pool=inputs.pool, run_dir=run_dir, target_set=inputs.target_set,
        target_model=inputs.target_model, tokenizer=inputs.tokenizer, device=inputs.device,
        seed=config.seed, model_preset=config.target_preset,
    )  # fmt: skip


def _write_resolved(run_dir, config, method, selector_config, data_prefix, target_data) -> None:
    """``config.yaml``: the shared settings and the method's section as they ran."""
    if rank() != 0:
        return
    resolved = {k: v for k, v in dataclasses.asdict(config).items() if k != "methods"}
    resolved.update(method=method, data_prefix=str(data_prefix), target_data=str(target_data))
    resolved[method] = dataclasses.asdict(selector_config)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))


def target_for_this_rank(target_model, group, device: torch.device):
    """The target model, loaded when given as a path, on the ranks that run ``fit``; None on the
    others, which score with the group's fitted state (a 2.8B target would only take memory)."""
    from megatron_bliss.selection.proxy import load_target_model

    if not isinstance(target_model, str | Path):
        return target_model
    return load_target_model(target_model, device) if group.fits_here else None


def selection_group(selector_class, config: SelectConfig):
    """The ranks ``fit`` runs on: the job, or its first ``group_size`` ranks for methods that
    can (``trains_on_group``); collective: every rank calls it."""
    from megatron_bliss.selection.group import SelectionGroup, make_group

    if selector_class.trains_on_group:
        return make_group(config.group_size)
    return SelectionGroup(world_size() if selector_class.data_parallel else 1)


def _fit_and_score(selector, group, method: str, run_dir: Path):
    """``fit`` on the selection group, then ``score`` on the scoring ranks (every rank, or rank
    0 alone for a method that is not data-parallel); (scores, {"training": ranks, "scoring":
    ranks})."""
    from megatron_bliss.selection.group import fit_on_group

    scoring = world_size() if selector.data_parallel else 1
    if not group.is_job:
        logger.info("%s: trains on ranks 0-%d, scores on all %d", method, group.size - 1, scoring)
    fit_on_group(selector, group, run_dir)
    with group.active():
        scores = np.asarray(selector.score(), dtype=np.float32)
    return scores, {"training": group.size, "scoring": scoring}


def _fit_score_select(selector, group, config: SelectConfig, method, data_prefix, run_dir: Path):
    from megatron_bliss.selection.rule import select_top_fraction, write_selection

    pool = selector.context.pool
    start = time.perf_counter()
    scores, ranks = _fit_and_score(selector, group, method, run_dir)
    if scores.shape != (len(pool),):
        raise RuntimeError(f"{method}: scored {scores.shape} for a pool of {len(pool)} sequences")
    seconds = time.perf_counter() - start
    temperature = selector.selection_temperature(config.gumbel_temperature, scores)
    if selector.data_parallel:  # every rank is here (else rank 0 alone runs the method)
        temperature = rank0_value(temperature)
    selection = select_top_fraction(scores, config.fraction, config.seed, temperature)
    if rank() == 0:
        selector.save(run_dir)
        selection = write_selection(
            run_dir, scores, method=method, fraction=config.fraction, data_prefix=data_prefix,
            seq_length=config.seq_length, seed=config.seed, gumbel_temperature=temperature,
            extra={
                "flops": selector.total_flops, "flops_by_kind": dict(selector.flops),
                "seconds": round(seconds, 2), **selector.summary(),
                "ranks": ranks,
            },
        )  # fmt: skip
    logger.info("%s: kept %d of %d sequences in %.1fs", method, len(selection), len(pool), seconds)
    return selection


def rank0_value(value: float) -> float:
    """Rank 0's ``value`` on every rank (one float; the ranks must select the same sequences)."""
    if world_size() == 1:
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64)
    torch.distributed.broadcast(tensor, src=0, group=host_group())
    return float(tensor.item())
