"""The pipeline's typed configuration (``megatron-bliss pipeline --config CFG.yaml``).

``pretrain`` and ``select`` hold the sections of the engine's ``PretrainConfig`` and the selector's
``SelectConfig``; the pipeline fills the per-stage fields itself (run directories, data, steps,
learning-rate multiplier, sequence length, seed), so one value never lives in two places.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_bliss.config import ConfigError, from_dict, load_config
from megatron_bliss.eval.task_specs import HEADLINE_TASKS
from megatron_bliss.pipeline.prepare import PrepareSection

LAUNCHERS = ("inprocess", "torchrun")


@dataclass
class LauncherConfig:
    """How training stages run (``pretrain: {launcher: {...}}`` in the pipeline YAML)."""

    type: str = "inprocess"
    """``inprocess``: in this process (tests observe it through hooks); ``torchrun``: a torchrun
    job of ``nproc_per_node`` ranks per stage, as a cluster runs it."""
    nproc_per_node: int = 2
    threads_per_rank: int | None = None
    """OMP threads of each rank; none: the machine's cores divided among the ranks."""
    keep_engine: bool = True
    """In-process training: each round continues in the DeepSpeed engine of the round before
    (the engine's round-boundary hook: selection and evaluation run in between, the engine's
    optimizer state stays in memory); false: each round builds a new engine and loads the
    previous round's checkpoint."""

    def __post_init__(self):
        if self.type not in LAUNCHERS:
            raise ConfigError(f"type '{self.type}' is not one of {', '.join(LAUNCHERS)}")
        if self.nproc_per_node < 1:
            raise ConfigError(f"nproc_per_node must be >= 1, got {self.nproc_per_node}")
        if self.threads_per_rank is not None and self.threads_per_rank < 1:
            raise ConfigError(f"threads_per_rank must be >= 1, got {self.threads_per_rank}")


@dataclass
class EvalSection:
    enabled: bool = True
    tasks: list[str] = field(default_factory=lambda: [*HEADLINE_TASKS, "lambada_openai"])
    """lm-eval task names; tasks whose data cannot be reached are skipped with a message."""
    task_data: str | None = "auto"
    """Local task files (layout of ../shared/data/eval); ``auto``: that folder when present."""
    ppl_data: str | None = None
    """Held-out documents (jsonl) for the ``c4_ppl`` perplexity task."""
    limit: int | None = None
    """Documents per task (quick runs); none: all."""
    batch_size: int = 8
    device: str | None = None
    last_round_only: bool = False
    """Evaluate only the last round's model (the held-out losses still cover every round)."""


@dataclass
class CompareSection:
    """What ``megatron-bliss compare`` runs (the pipeline itself ignores this section)."""

    methods: list[str] = field(default_factory=lambda: ["bliss", "random", "dsir", "reducible"])
    seeds: int = 3
    seed_stride: int = 1000
    """Seed k runs the pipeline with ``seed + k * seed_stride``."""
    baseline: str = "random"
    """The method whose final target-set loss the others' tokens-to-reach figures refer to."""
    variants: dict[str, dict] = field(default_factory=dict)
    """Named variants usable in ``methods``: ``{name: {method: bliss, select: {bliss: {...}}}}``
    (the ``select`` part is merged over the config's; ``snapshot_target: true`` selects from
    each round's snapshot, as ``overlap`` does); they share every seed's warm-up."""


@dataclass
class PipelineConfig:
    run_dir: str = "runs/pipeline"
    method: str = "bliss"
    """A selection method of ``megatron_bliss.selection.registry`` (bliss, random, mates, ...)."""
    shards: list[str] = field(default_factory=list)
    """Indexed shard prefixes: shard 0 for the warm-up, shard r for round r."""
    num_rounds: int | None = None
    """Selection rounds; default: one per shard after the first."""
    prepare: PrepareSection = field(default_factory=PrepareSection)
    """Make the shards (and a tokenizer) from a raw corpus first, instead of naming ``shards``."""
    tokenizer: str | None = None
    seq_length: int = 128
    seed: int = 1234
    target_data: str | None = None
    """Target set of the selector (jsonl): LAMBADA at paper scale, held-out C4 for tiny runs."""
    target_format: str = "documents"
    target_heldout_fraction: float = 0.0
    """When > 0: this share of the target set (fixed shuffle) is held out of selection, and its
    loss is the target training's ``val_loss/target``; 0: selectors see all of ``target_data``."""
    target_set_task: str | None = None
    """The lm-eval task that is also the target set (e.g. lambada_openai), marked in reports."""
    warmup_steps: int = 20
    """Target optimizer steps of the warm-up (round 0) on a random subset of shard 0."""
    warmup_fraction: float = 0.2
    round_steps: int = 10
    """Target optimizer steps per selection round."""
    fraction: float = 0.2
    """Fraction of each round's shard kept by the selector."""
    lr_round_factor: float = 0.5
    """Learning-rate multiplier of round r is lr_round_factor ** r (BLISS halves it per round)."""
    decay_steps: int = 0
    """When > 0, each round's checkpoint gets a separate decay run of this many steps, which is
    what gets evaluated (the paper's 200-step decay); training continues from the undecayed one."""
    group_size: int | None = None
    """In a multi-rank job: the ranks that train the selector (methods that can, e.g. BLISS; the
    first ``group_size`` ranks, ``selection/group.py``); none: the ranks of one node. Every rank
    scores. Sets ``select.group_size`` of every round."""
    overlap: bool = False
    """Select round r+1 on the last ``group_size`` launched ranks while the other ranks train
    round r, from round r's state at ``snapshot_fraction`` of its steps (``overlap.py``); false:
    every rank trains, then every rank takes part in the selection."""
    snapshot_fraction: float = 0.5
    """With ``overlap``: how far into a round its target is snapshotted for the next selection."""
    snapshot_target: bool = False
    """Select each round with the previous round's snapshot (``snapshot_fraction``), as
    ``overlap`` does, in a sequential run: what overlap's staler target costs, measured with
    ``compare`` (a variant with ``snapshot_target: true``). Implied by ``overlap``."""
    selections_from: str | None = None
    """Another run's directory: every round trains on that run's selection of the round instead
    of selecting (``SELECTIONS_FROM`` of the launch scripts; the paper trains its 2.8B model on
    what the 1B setting selected). The shards are the ones its selections index."""
    reuse_warmup: str | None = None
    """round_0 of another pipeline run with the same warm-up config (equal-start comparisons)."""
    pretrain: dict[str, Any] = field(default_factory=dict)
    """PretrainConfig sections (model, train, optimizer, schedule, deepspeed, logging, ...)."""
    select: dict[str, Any] = field(default_factory=dict)
    """SelectConfig fields and per-method sections (bliss:, mates:, ...). ``influence:
    {adam_state: auto}`` selects with the previous round's AdamW state (Adam version)."""
    eval: EvalSection = field(default_factory=EvalSection)
    compare: CompareSection = field(default_factory=CompareSection)

    def __post_init__(self):
        if self.num_rounds is None and self.shards:
            self.num_rounds = len(self.shards) - 1

    def rounds(self) -> int:
        return int(self.num_rounds or 0)

    @property
    def launcher(self) -> LauncherConfig:
        """``pretrain.launcher``, typed (unknown keys and values are errors)."""
        return from_dict(LauncherConfig, self.pretrain.get("launcher") or {}, "pretrain.launcher")

    def pretrain_sections(self) -> dict[str, Any]:
        """The ``pretrain`` sections that are PretrainConfig's (all but ``launcher``)."""
        return {k: v for k, v in self.pretrain.items() if k != "launcher"}


def load_pipeline_config(path: str | Path | None, overrides: list[str] | None = None):
    from megatron_bliss.pipeline.selections_from import with_source_shards

    config = with_source_shards(load_config(PipelineConfig, path, overrides), str(path or "config"))
    check_pipeline_config(config, str(path or "config"))
    return config


def check_pipeline_config(config: PipelineConfig, where: str) -> None:
    """What a pipeline YAML must satisfy beyond its types (also for a recipe section's config)."""
    _check_shards(config, where)
    for name in ("warmup_fraction", "fraction"):
        if not 0 < getattr(config, name) <= 1:
            raise ConfigError(f"{where}: {name} must be in (0, 1], got {getattr(config, name)}")
    if not 0 < config.snapshot_fraction <= 1:
        raise ConfigError(
            f"{where}: snapshot_fraction must be in (0, 1], got {config.snapshot_fraction}"
        )
    if config.overlap and config.selections_from:
        raise ConfigError(f"{where}: overlap: nothing is selected with selections_from")
    if not config.lr_round_factor > 0:  # a negative factor would flip the LR's sign per round
        raise ConfigError(f"{where}: lr_round_factor must be > 0, got {config.lr_round_factor}")
    if "run_dir" in config.pretrain or "run_dir" in config.select:
        raise ConfigError(f"{where}: run directories are set by the pipeline (remove run_dir)")
    try:
        config.launcher  # noqa: B018 - checked now, used by every training stage
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def _check_shards(config: PipelineConfig, where: str) -> None:
    """Shards come from ``shards`` (one per round plus the warm-up's) or from ``prepare.corpus``."""
    if config.prepare.corpus:
        if config.shards:
            raise ConfigError(f"{where}: give either 'shards' or 'prepare.corpus', not both")
        if config.num_rounds is None:
            raise ConfigError(f"{where}: 'prepare.corpus' needs 'num_rounds'")
        return
    if not config.shards:
        raise ConfigError(f"{where}: 'shards' is empty (shard 0 is the warm-up shard)")
    if config.rounds() > len(config.shards) - 1:
        raise ConfigError(
            f"{where}: num_rounds={config.num_rounds} needs {config.rounds() + 1} shards, "
            f"got {len(config.shards)}"
        )
