"""The typed configuration of one pretraining stage (``megatron-bliss pretrain --config``).

One dataclass tree with defaults that run on a 2-core CPU; YAML files and ``section.key=value``
overrides replace leaves. ``validate_config`` checks what can be checked before any process group
or model exists (batch arithmetic, context length, precision vs device) and raises one-line
``ConfigError``s; ``resolve`` fills derived values (gradient accumulation, precision).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_bliss.config import ConfigError, load_config
from megatron_bliss.utils.paths import resolve_shipped


@dataclass
class SourceConfig:
    """One training shard, with its blending weight and an optional ``selection.npy``."""

    prefix: str = ""
    weight: float = 1.0
    selection: str | None = None


@dataclass
class ModelConfig:
    preset: str = "pythia-tiny"
    """A name of ``megatron_bliss.models.presets.PRESETS``."""
    vocab_size: int | None = None
    """Embedding rows; default: the tokenizer's size padded to 128, else the preset's own."""
    max_positions: int | None = None
    """Model context; default: the preset's own."""
    attn_implementation: str = "auto"
    """auto (flash_attention_2 on a GPU when installed, else sdpa), sdpa, eager, flash_attention_2."""
    gradient_checkpointing: bool = False
    """Activation checkpointing: recompute each layer in the backward pass."""
    liger_kernel: bool | str = "auto"
    """liger-kernel's fused RMSNorm, SwiGLU and RoPE for the llama family (not its losses: the
    engine has its own fused LM-head loss). auto: applied on CUDA when ``liger_kernel`` imports,
    else skipped with one info line; on: required (stops with one line on CPU, for gpt_neox or
    when not installed); off. YAML reads on/off as booleans: true/false mean on/off."""
    init_from: str | None = None
    """Start from a Hugging Face checkpoint (local dir or hub name) instead of random weights."""

    def __post_init__(self):
        if isinstance(self.liger_kernel, bool):  # YAML 1.1: on/off are booleans
            self.liger_kernel = "on" if self.liger_kernel else "off"


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    """Training shards; ``prefix``/``selection`` below are a shorthand for a single source."""
    prefix: str | None = None
    selection: str | None = None
    seq_length: int = 128
    tokenizer: str | None = None
    """HF tokenizer dir or hub name; copied into RUN_DIR/tokenizer so export-hf can ship it."""
    valid_prefix: str | None = None
    """Held-out shard for the periodic validation loss (``val_loss``)."""
    valid_sets: dict[str, str] = field(default_factory=dict)
    """More held-out shards by name, evaluated with ``valid_prefix`` and logged as
    ``val_loss/NAME`` (e.g. the target set's held-out part beside held-out C4)."""
    eod_token_id: int | None = None
    """End-of-document id for the three Megatron options below; default: the tokenizer's eos."""
    eod_mask_loss: bool = False
    reset_position_ids: bool = False
    reset_attention_mask: bool = False
    cache_dir: str | None = None
    """Where the sample index is cached; default RUN_DIR/data_cache."""

    def all_sources(self) -> list[SourceConfig]:
        sources = list(self.sources)
        if self.prefix:
            sources.append(SourceConfig(prefix=self.prefix, selection=self.selection))
        elif self.selection:
            raise ConfigError("data.selection needs data.prefix (or put it in data.sources)")
        return sources


@dataclass
class TrainConfig:
    global_batch_size: int = 8
    """Sequences per optimizer step over all ranks = micro_batch * accumulation * world size."""
    micro_batch_size: int = 2
    """Sequences per rank per forward pass."""
    train_steps: int = 20
    """Optimizer steps of this stage (the run stops when global step reaches it)."""
    seed: int = 1234
    precision: str = "auto"
    """auto (bf16 on GPU, fp32 on CPU), bf16 (fp32 master weights), fp32, fp16 (GPU only)."""
    grad_clip: float = 1.0
    loss_kernel: str = "auto"
    """auto (fused on CUDA, logits on CPU), fused (chunked linear+cross-entropy: no [B,T,V]
    logits), logits (materialise logits, then cross-entropy)."""
    device: str = "auto"
    """auto, cpu or cuda."""
    compile: bool = False
    """torch.compile each transformer block's forward in place (``models/compile.py``). Per
    block, not the whole model: the blocks share one compiled graph (compile time independent of
    depth), the module tree and state-dict keys stay the eager ones (checkpoints, resume and
    export-hf unchanged), and what runs between blocks (embeddings, the fused LM-head loss,
    DeepSpeed's hooks) stays eager, so a graph break there never splits a block. Under ZeRO-3 the
    blocks become ZeRO-3 leaf modules (``deepspeed.zero3_leaf_blocks``), so no ZeRO hook runs
    inside a compiled block."""


@dataclass
class OptimizerConfig:
    lr: float = 1e-3
    """Peak learning rate (before the round multiplier)."""
    min_lr: float = 0.0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8


@dataclass
class ScheduleConfig:
    type: str = "cosine"
    """cosine: warm-up then cosine to min_lr at train_steps; constant: warm-up then constant
    (warmup-stable-decay, the BLISS target recipe) with an optional final decay."""
    warmup_steps: int = 2
    lr_multiplier: float = 1.0
    """Scales lr and min_lr; BLISS uses 0.5 ** round."""
    decay_steps: int = 0
    """constant schedule: the last decay_steps steps of train_steps decay to min_lr."""
    decay_style: str = "linear"
    """linear, cosine or halving (lr * 0.5 ** (k / halving_steps), BLISS's decay runs)."""
    halving_steps: int = 50
    start_step: int = 0
    """Step the schedule counts from (a decay run started from a round's checkpoint)."""


@dataclass
class DeepSpeedSection:
    config: str = "ds_configs/cpu_zero3.json"
    """DeepSpeed JSON (path relative to the repo root or the working directory)."""
    zero_stage: int | None = None
    """Overrides zero_optimization.stage of the JSON."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Extra keys merged into the JSON (nested mappings merge)."""
    zero3_leaf_blocks: bool | None = None
    """ZeRO-3: make each transformer block a ZeRO-3 leaf module, so one hook on the block fetches
    and releases all its parameters instead of one hook per layer inside it (fewer, larger
    gathers). None (default): on with train.compile (no ZeRO code inside a compiled block), off
    otherwise. Ignored by ZeRO 0-2."""


@dataclass
class CheckpointConfig:
    save_interval: int = 0
    """Save every N optimizer steps (0: only at the end and on SIGTERM/SIGUSR1)."""
    keep_last: int = 2
    save_at_end: bool = True
    resume: bool = True
    """Continue from RUN_DIR/checkpoints/latest when it exists."""
    load: str | None = None
    """Resume from another run's checkpoints dir (or a step folder) instead of RUN_DIR's."""
    elastic_resume: bool = True
    """Resume a checkpoint written by a different number of ranks (same ZeRO stage 1-3): it is
    converted once to DeepSpeed's universal checkpoint (``<tag>_universal/`` next to it) and
    loaded from there, so weights, AdamW moments, step and data position carry over; each rank's
    RNG is re-seeded from (seed, step, rank). False: such a checkpoint stops the run."""
    trust: bool = False
    """Load checkpoints (checkpoint.load, resume, the universal conversion) with DeepSpeed's full
    unpickler, which can run code stored in the file. False (default): weights-only loading with
    an allow-list of DeepSpeed's own types; anything else is refused with one line."""
    adam_state_params: list[str] = field(default_factory=list)
    """Layers whose AdamW second moments (with step, betas, eps) go into ``adam_state.pt`` of
    every checkpoint, for Influence Distillation's Adam preconditioner: subset names
    (``down_proj``) or module-name suffixes. Empty (default): not written."""
    snapshot_step: int | None = None
    """Also write this step's checkpoint to ``RUN_DIR/snapshot/`` (one kept, whatever
    ``keep_last``): a copy another job part may load while training goes on (the selection
    ranks of ``selection.overlap``). None: none."""


@dataclass
class LoggingConfig:
    log_interval: int = 1
    eval_interval: int = 0
    """Held-out loss every N steps (and at the end) when data.valid_prefix is set."""
    eval_batches: int = 2
    tensorboard: bool = True
    progress_bar: bool = True
    peak_flops: float | None = None
    """Device peak FLOP/s for MFU; default: a table for known GPUs, cpu_peak_flops on CPU."""
    cpu_peak_flops: float | None = None
    """CPU peak FLOP/s per rank; default: measured at start (fastest square matmul)."""
    profile_steps: list[int] = field(default_factory=list)
    """``[first, last]``: torch.profiler trace of these steps into RUN_DIR/profile/ (empty: off)."""


@dataclass
class PretrainConfig:
    run_dir: str = "runs/pretrain"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


RECIPE_SECTION = "selection"
"""A pretrain YAML may also hold a multi-round selection recipe under this key, which the launch
scripts hand to the pipeline (``pipeline/recipe.py``); one training stage leaves it alone."""


def load_pretrain_config(path: str | Path | None, overrides: list[str] | None = None):
    """Defaults, then the YAML file, then overrides; structural checks only (no world yet)."""
    config = load_config(PretrainConfig, path, overrides, ignore=(RECIPE_SECTION,))
    validate_static(config, where=str(path) if path else "config")
    return config


def read_ds_json(section: DeepSpeedSection) -> dict[str, Any]:
    """The DeepSpeed JSON ``deepspeed.config``: a path, or a shipped ``ds_configs/NAME.json``."""
    path = resolve_shipped(section.config)
    if not path.exists():
        raise ConfigError(f"deepspeed.config: {section.config}: file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


_CHOICES = {
    "train.precision": ("auto", "bf16", "fp32", "fp16"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.loss_kernel": ("auto", "fused", "logits"),
    "schedule.type": ("cosine", "constant"),
    "schedule.decay_style": ("linear", "cosine", "halving"),
    "model.attn_implementation": ("auto", "sdpa", "eager", "flash_attention_2"),
    "model.liger_kernel": ("auto", "on", "off"),
}


def validate_static(config: PretrainConfig, where: str = "config") -> None:
    """Checks that need neither the world size nor the device."""
    from megatron_bliss.models.presets import PRESETS
    from megatron_bliss.utils.dirs import check_dir_creatable

    values = {
        "train.precision": config.train.precision,
        "train.device": config.train.device,
        "schedule.type": config.schedule.type,
        "schedule.decay_style": config.schedule.decay_style,
        "model.attn_implementation": config.model.attn_implementation,
        "model.liger_kernel": config.model.liger_kernel,
    }
    for key, value in values.items():
        if value not in _CHOICES[key]:
            raise ConfigError(f"{where}: {key}={value!r} (choose from {', '.join(_CHOICES[key])})")
    if config.model.preset not in PRESETS:
        raise ConfigError(
            f"{where}: model.preset={config.model.preset!r} unknown (known: {', '.join(PRESETS)})"
        )
    train = config.train
    for name in ("global_batch_size", "micro_batch_size", "train_steps"):
        if getattr(train, name) < 1:
            raise ConfigError(f"{where}: train.{name} must be >= 1")
    if train.global_batch_size % train.micro_batch_size:
        raise ConfigError(
            f"{where}: train.micro_batch_size={train.micro_batch_size} does not divide "
            f"train.global_batch_size={train.global_batch_size}"
        )
    if config.data.seq_length < 1:
        raise ConfigError(f"{where}: data.seq_length must be >= 1")
    try:
        check_dir_creatable(config.run_dir, "run_dir")
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None
    window = config.logging.profile_steps
    if window and (len(window) != 2 or not 1 <= window[0] <= window[1]):
        raise ConfigError(
            f"{where}: logging.profile_steps={window} must be [first, last] with 1 <= first <= last"
        )
    context = config.model.max_positions or PRESETS[config.model.preset].max_positions
    if config.data.seq_length > context:
        raise ConfigError(
            f"{where}: data.seq_length={config.data.seq_length} is longer than the model's "
            f"context ({context} positions of preset {config.model.preset})"
        )
    check_optimizer(config, where)
    if config.schedule.warmup_steps < 0 or config.schedule.decay_steps < 0:
        raise ConfigError(f"{where}: schedule warmup_steps/decay_steps must be >= 0")
    if config.checkpoint.keep_last < 1:
        raise ConfigError(f"{where}: checkpoint.keep_last must be >= 1")
    if not config.data.all_sources():
        raise ConfigError(f"{where}: no training data (set data.prefix or data.sources)")
    for source in config.data.all_sources():
        if not source.prefix:
            raise ConfigError(f"{where}: a data source has an empty prefix")


def check_optimizer(config: PretrainConfig, where: str) -> None:
    """Values torch would take (a negative min_lr runs gradient ascent near the end of a cosine
    schedule) or reject in its own words without the key: one line naming the key instead."""
    optimizer, schedule = config.optimizer, config.schedule
    rules = {
        "optimizer.lr": (optimizer.lr, optimizer.lr > 0, "must be > 0"),
        "optimizer.min_lr": (
            optimizer.min_lr,
            0 <= optimizer.min_lr <= optimizer.lr,
            f"must be in [0, optimizer.lr={optimizer.lr}]",
        ),
        "optimizer.weight_decay": (optimizer.weight_decay, optimizer.weight_decay >= 0, ">= 0"),
        "optimizer.beta1": (optimizer.beta1, 0 <= optimizer.beta1 < 1, "must be in [0, 1)"),
        "optimizer.beta2": (optimizer.beta2, 0 <= optimizer.beta2 < 1, "must be in [0, 1)"),
        "optimizer.eps": (optimizer.eps, optimizer.eps > 0, "must be > 0"),
        "schedule.lr_multiplier": (schedule.lr_multiplier, schedule.lr_multiplier > 0, "> 0"),
    }
    for key, (value, valid, rule) in rules.items():
        if not (valid and math.isfinite(value)):
            rule = rule if rule.startswith("must") else f"must be {rule}"
            raise ConfigError(f"{where}: {key}={value} {rule}")


def device_type(config: PretrainConfig) -> str:
    """``train.device`` as ``cuda`` or ``cpu`` (each rank's GPU index comes from LOCAL_RANK)."""
    from megatron_bliss.utils.device import resolve_device

    return resolve_device(config.train.device, "train.device").type


def resolve_precision(config: PretrainConfig, device: str) -> str:
    precision = config.train.precision
    if precision == "auto":
        return "bf16" if device == "cuda" else "fp32"
    if precision == "fp16" and device == "cpu":
        raise ConfigError("train.precision=fp16 is not supported on CPU (use bf16 or fp32)")
    return precision


def gradient_accumulation(config: PretrainConfig, world_size: int) -> int:
    """Accumulation steps so that micro * accumulation * world == global batch, or one line."""
    per_step = config.train.micro_batch_size * world_size
    if config.train.global_batch_size % per_step:
        raise ConfigError(
            f"train.global_batch_size={config.train.global_batch_size} is not divisible by "
            f"micro_batch_size x world size = {config.train.micro_batch_size} x {world_size}"
        )
    return config.train.global_batch_size // per_step
