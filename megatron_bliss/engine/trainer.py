"""One pretraining stage on DeepSpeed ZeRO: ``pretrain(config, hooks) -> summary``.

Runs in the current process(es): plain python (1 rank), torchrun, the deepspeed launcher or srun.
Given a ``next_round`` hook (``engine/hooks.py``), one call trains several rounds in one engine:
after each round's last step and checkpoint the hook returns the next round's config, and the
training data, run directory and sinks are rebuilt in place. Everything ``pretrain`` creates
(engine, process group, TensorBoard writer, signal handlers, transformers' ZeRO-3 switch) is
released on return.
A run that stops early, on SIGTERM/SIGUSR1 or because a hook asked, returns a summary marked
``interrupted`` (after the step's checkpoint when one was asked for); the command exits 75 then.

Single process:  ``megatron-bliss pretrain --config configs/pretrain_tiny_cpu.yaml``
Two CPU ranks:   ``OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 -m megatron_bliss.cli pretrain ...``
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import math
import random
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megatron_bliss.config import ConfigError, dump_yaml, merge, to_dict
from megatron_bliss.engine import checkpoint as ckpt
from megatron_bliss.engine.batches import (
    BatchOptions,
    make_batch,
    masked_lm_loss,
    micro_batch_indices,
)
from megatron_bliss.engine.config import (
    PretrainConfig,
    device_type,
    gradient_accumulation,
    read_ds_json,
    resolve_precision,
    validate_static,
)
from megatron_bliss.engine.distributed import (
    DistributedContext,
    PreemptionFlag,
    all_reduce_mean,
    any_rank_signal,
    init_distributed,
    rank0_failure_note,
    wait_for_rank0,
)
from megatron_bliss.engine.hooks import Hooks, NextRound, RoundBoundary, RoundEnd
from megatron_bliss.engine.loss import FusedHeadLoss
from megatron_bliss.engine.metrics import (
    MetricSink,
    device_peak_flops,
    flops_per_token,
    memory_stats,
    truncate_metrics,
)
from megatron_bliss.engine.optimizer_state import require_subset_layers, save_adam_state
from megatron_bliss.engine.profiling import StepProfiler
from megatron_bliss.engine.rounds import check_in_place
from megatron_bliss.engine.schedules import learning_rate
from megatron_bliss.engine.versions import check_deepspeed_version
from megatron_bliss.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

# torch deprecation notices raised inside DeepSpeed on every ZeRO collective.
warnings.filterwarnings("ignore", message=r".*(all_gather_into_tensor|reduce_scatter_tensor)")


def pretrain(
    config: PretrainConfig, hooks: Hooks | None = None, next_round: RoundBoundary | None = None
) -> dict[str, Any]:
    """Train one stage as configured, and the rounds ``next_round`` hands over after it; returns
    the last round's summary (each round's is also written to its RUN_DIR/summary.json)."""
    validate_static(config)
    check_deepspeed_version()  # the checkpoint workarounds follow DeepSpeed's internals
    device = device_type(config)
    precision = resolve_precision(config, device)
    context = init_distributed(device)
    stage = None
    try:
        stage = TrainingStage(config, hooks or Hooks(), context, precision)
        return stage.run(next_round)
    finally:
        if stage is not None:
            stage.close()
        context.close()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


MASK_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # attention masks by precision


@dataclass(frozen=True)
class StopRequest:
    """Why a run stops before its last step, and whether that step is checkpointed first."""

    signal: int | None
    """SIGTERM/SIGUSR1 received on some rank (always checkpointed); None: a hook's stop."""
    save: bool

    @property
    def reason(self) -> str:
        return "signal" if self.signal else "hook"


class StepTimer:
    """Wall time of training steps between two logged steps. Only a logged step waits for the
    device, so the sum over the interval is the device's time even when the host runs ahead."""

    def __init__(self):
        self.seconds, self.steps = 0.0, 0

    @contextlib.contextmanager
    def step(self, synchronize: torch.device | None) -> Iterator[None]:
        started = time.perf_counter()
        yield
        if synchronize is not None and synchronize.type == "cuda":
            torch.cuda.synchronize(synchronize)
        self.seconds += time.perf_counter() - started
        self.steps += 1

    def mean_and_reset(self) -> float:
        mean = self.seconds / max(self.steps, 1)
        self.seconds, self.steps = 0.0, 0
        return mean


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def build_ds_config(
    config: PretrainConfig, accumulation: int, precision: str, device_type: str
) -> dict[str, Any]:
    """The DeepSpeed JSON with everything the PretrainConfig owns filled in from it.

    Batch sizes, clipping, precision and optimizer hyper-parameters have one source of truth (the
    PretrainConfig); the JSON may leave them out or write "auto", and a differing value stops.
    """
    ds = merge(read_ds_json(config.deepspeed), config.deepspeed.overrides)
    owned = {
        "train_micro_batch_size_per_gpu": config.train.micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": config.train.global_batch_size,
        "gradient_clipping": config.train.grad_clip,
    }
    for key, value in owned.items():
        if ds.get(key, "auto") not in ("auto", value):
            raise ConfigError(
                f"{config.deepspeed.config}: {key}={ds[key]} conflicts with the pretrain config "
                f'({value}); remove it from the JSON or set it to "auto"'
            )
        ds[key] = value
    if "scheduler" in ds:
        logger.warning("%s: 'scheduler' ignored (schedule.* sets the LR)", config.deepspeed.config)
        ds.pop("scheduler")
    zero = dict(ds.get("zero_optimization", {}))
    if config.deepspeed.zero_stage is not None:
        zero["stage"] = config.deepspeed.zero_stage
    zero.setdefault("stage", 0)
    ds["zero_optimization"] = zero
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": precision == "bf16"}
    ds["fp16"] = {**ds.get("fp16", {}), "enabled": precision == "fp16"}
    optimizer = copy.deepcopy(ds.get("optimizer", {"type": "AdamW", "params": {}}))
    params = optimizer.setdefault("params", {})
    params.update(
        lr=config.optimizer.lr,
        betas=[config.optimizer.beta1, config.optimizer.beta2],
        eps=config.optimizer.eps,
        weight_decay=config.optimizer.weight_decay,
    )
    if device_type == "cpu":
        params["torch_adam"] = True  # skips the fused_adam JIT build (same speed on CPU)
    ds["optimizer"] = optimizer
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def with_universal_loading(ds_config: dict[str, Any]) -> dict[str, Any]:
    """The DeepSpeed JSON that makes ``engine.load_checkpoint`` read a universal checkpoint
    (an elastic resume); saving is unchanged."""
    checkpoint = {**ds_config.get("checkpoint", {}), "load_universal": True}
    return {**ds_config, "checkpoint": checkpoint}


SHAPE_KEYS = (
    "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "intermediate_size", "tie_word_embeddings",
)  # fmt: skip


def check_resumable(meta: dict[str, Any], config: PretrainConfig, model_config, where) -> None:
    """One line naming the key when a checkpoint cannot continue as this run: another preset or
    model shape (DeepSpeed would stop in a size mismatch) or another sequence length (the data
    position counts sequences of the saved length, so training would silently go on elsewhere)."""
    hint = "export it (megatron-bliss export-hf) and start a new run with model.init_from"
    saved_preset = meta.get("preset")
    if saved_preset is not None and saved_preset != config.model.preset:
        raise ConfigError(
            f"{where}: checkpoint is of model.preset={saved_preset!r}, this run has "
            f"model.preset={config.model.preset!r}; resume with the same preset, or {hint}"
        )
    saved_length = meta.get("seq_length")
    if saved_length is not None and int(saved_length) != config.data.seq_length:
        raise ConfigError(
            f"{where}: checkpoint was trained with data.seq_length={saved_length}, this run has "
            f"data.seq_length={config.data.seq_length}; resume with the same length, or {hint}"
        )
    saved_model = meta.get("model_config") or {}
    for key in SHAPE_KEYS:
        saved, live = saved_model.get(key), getattr(model_config, key, None)
        if saved is not None and live is not None and saved != live:
            raise ConfigError(
                f"{where}: checkpoint has {key}={saved}, this run's model has {key}={live} "
                f"(model.* / data.tokenizer differ); resume with the same model, or {hint}"
            )


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay for biases and norm weights (1-D tensors), as Megatron."""
    decay, no_decay = [], []
    for _, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        shape = getattr(parameter, "ds_shape", parameter.shape)
        (decay if len(shape) >= 2 else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class TrainingStage:
    """Everything one stage holds: data, engine, sinks; ``run`` is the loop, ``close`` frees it."""

    def __init__(
        self, config: PretrainConfig, hooks: Hooks, context: DistributedContext, precision: str
    ):
        self.config = config
        self.hooks = hooks
        self.context = context
        self.precision = precision
        self.device = context.device
        self.mask_dtype = MASK_DTYPES.get(precision, torch.float32)
        self.engine = None
        self.model: torch.nn.Module | None = None
        self.fused_loss: FusedHeadLoss | None = None
        self.restore_liger = None  # undoes liger-kernel's process-wide patches (close)
        self.resume_point: ckpt.ResumePoint | None = None
        self.step, self.consumed_samples = 0, 0
        self.losses: list[float] = []  # every step's loss, mean over ranks, once read back
        self.pending_losses: list[torch.Tensor] = []  # on the device until the next log step
        self.timer = StepTimer()
        self.sink = MetricSink(Path("."), enabled=False, tensorboard=False)
        self.profiler = StepProfiler(
            config.logging.profile_steps, Path(config.run_dir), context.rank, self.device.type
        )
        self.accumulation = gradient_accumulation(config, context.world_size)
        self.run_dir = Path(config.run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        if context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            dump_yaml(config, self.run_dir / "config.yaml")
        self._check_data_files()
        self.tokenizer = self._load_tokenizer()
        seed_everything(config.train.seed)
        self.ds_config = build_ds_config(config, self.accumulation, precision, self.device.type)
        self.zero_stage = int(self.ds_config["zero_optimization"]["stage"])
        self.model = self._build_model()
        self.fused_loss = FusedHeadLoss(self.model) if self._use_fused_loss() else None
        self._log_model()
        self.vocab_size = int(self.model.config.vocab_size)
        self.dataset = self._dataset()
        self.valid_datasets = self._valid_datasets()
        self.batch_options = self._batch_options()
        self.flops_per_token = flops_per_token(self.model.config, config.data.seq_length)
        self.peak_flops = device_peak_flops(
            self.device, precision, config.logging.peak_flops, config.logging.cpu_peak_flops
        )
        self.resume_point = self._find_resume_point()
        self.engine = self._initialize_engine()
        self.model = None  # the engine owns it now
        try:
            self._resume()
            if self.step == 0 and context.is_main:
                truncate_metrics(self.run_dir / "metrics.jsonl", 0)  # a fresh start
            self._write_run_info()
            self.sink = MetricSink(self.run_dir, context.is_main, config.logging.tensorboard)
            self.last_saved = self.step if self.step > 0 else -1  # a resumed step is saved
        except BaseException:
            self.close()  # pretrain() never sees this object: free the engine here
            raise

    # ---------------------------------------------------------------- set-up
    def _check_data_files(self) -> None:
        """Missing shards stop the run before the tokenizer, model and engine cost minutes."""
        from megatron_bliss.data.pool import require_indexed_files

        for prefix in self._data_prefixes():
            require_indexed_files(
                prefix,
                hint="build it with tools/preprocess_data.py; launch_scripts/pretrain_tiny_cpu.sh "
                "builds the tiny config's data",
            )

    def _data_prefixes(self) -> list[str]:
        """Every shard this run reads: training sources and held-out sets."""
        data = self.config.data
        held_out = [data.valid_prefix] if data.valid_prefix else []
        return [s.prefix for s in data.all_sources()] + held_out + list(data.valid_sets.values())

    def _load_tokenizer(self):
        name = self.config.data.tokenizer
        if not name:
            return None
        from megatron_bliss.data.tokenizer import check_dataset_tokenizer, load_tokenizer

        tokenizer = load_tokenizer(name)  # HF dir or hub name, tokenizers *.json, spm *.model
        for prefix in self._data_prefixes():  # before the copy: a wrong one is never exported
            check_dataset_tokenizer(prefix, tokenizer, name)
        if self.context.is_main:
            target = self.run_dir / "tokenizer"
            temporary = self.run_dir / ".tokenizer.tmp"
            shutil.rmtree(temporary, ignore_errors=True)
            tokenizer.save_pretrained(temporary)
            shutil.rmtree(target, ignore_errors=True)
            temporary.rename(target)
        return tokenizer

    def _vocab_size(self) -> int | None:
        from megatron_bliss.models.presets import padded_vocab_size

        if self.config.model.vocab_size:
            return self.config.model.vocab_size
        if self.tokenizer is not None:
            return padded_vocab_size(len(self.tokenizer))
        return None

    def _build_model(self) -> torch.nn.Module:
        """The model, with activation checkpointing, liger-kernel and torch.compile as configured
        (each in place: module names and state-dict keys stay the eager model's)."""
        from megatron_bliss.models.compile import compile_blocks, transformer_blocks
        from megatron_bliss.models.liger import apply_liger, model_type, use_liger
        from megatron_bliss.models.loading import build_training_model

        # Decided before the model is built, so model.liger_kernel=on that cannot run stops at once.
        liger = use_liger(
            self.config.model.liger_kernel, model_type(self.config.model), self.device.type
        )
        model = build_training_model(
            self.config.model,
            vocab_size=self._vocab_size(),
            seed=self.config.train.seed,
            ds_config=self.ds_config if self.zero_stage == 3 else None,
        )
        if self.config.checkpoint.adam_state_params:  # a typo fails now, not at the first save
            require_subset_layers(model, self.config.checkpoint.adam_state_params)
        if self.config.model.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        if liger:
            self.restore_liger = apply_liger(model)
        if self._zero3_leaf_blocks():  # before deepspeed.initialize, which installs the hooks
            from deepspeed.utils import set_z3_leaf_module

            for block in transformer_blocks(model):
                set_z3_leaf_module(block, True)
            logger.info("ZeRO-3: transformer blocks are leaf modules (one fetch per block)")
        if self.config.train.compile:
            count = compile_blocks(model)
            logger.info("torch.compile: %d transformer blocks compiled in place", count)
        return model

    def _zero3_leaf_blocks(self) -> bool:
        """``deepspeed.zero3_leaf_blocks``; by default on exactly when blocks are compiled."""
        if self.zero_stage != 3:
            return False
        setting = self.config.deepspeed.zero3_leaf_blocks
        return self.config.train.compile if setting is None else setting

    def _log_model(self) -> None:
        logger.info(
            "model %s: %s attention, %s loss, %.2fM parameters, ZeRO-%d, %s, %d rank(s), "
            "accumulation %d",
            self.config.model.preset,
            self.model.config._attn_implementation,
            "fused linear+CE" if self.fused_loss else "logits+CE",
            _count(self.model) / 1e6,
            self.zero_stage,
            self.precision,
            self.context.world_size,
            self.accumulation,
        )

    def _use_fused_loss(self) -> bool:
        """``train.loss_kernel``: auto = fused on CUDA (memory), logits on CPU (bit-compatible)."""
        choice = self.config.train.loss_kernel
        return choice == "fused" or (choice == "auto" and self.device.type == "cuda")

    def _dataset(self):
        """Sample index built on rank 0 and cached on disk; the other ranks wait for the file (not
        in a collective, whose timeout a long build could outlast) and read it."""
        from megatron_bliss.data.training_dataset import DataSource, TrainingDataset

        data = self.config.data
        sources = [DataSource(s.prefix, s.weight, s.selection) for s in data.all_sources()]
        num_samples = self.config.train.train_steps * self.config.train.global_batch_size
        cache_dir = Path(data.cache_dir or self.run_dir / "data_cache")
        failed = cache_dir / ".training_index.failed"

        def wait(path: Path) -> None:
            wait_for_rank0(path, failed, f"training index {path.name}")

        with rank0_failure_note(failed, self.context):
            return TrainingDataset(
                sources, data.seq_length, num_samples, self.config.train.seed,
                vocab_size=self.vocab_size, cache_dir=str(cache_dir),
                wait_for_cache=None if self.context.is_main else wait,
            )  # fmt: skip

    def _valid_datasets(self) -> dict[str, Any]:
        """Held-out datasets by metric name: ``val_loss`` and ``val_loss/NAME``."""
        data = self.config.data
        named = {f"val_loss/{name}": prefix for name, prefix in data.valid_sets.items()}
        prefixes = {"val_loss": data.valid_prefix, **named} if data.valid_prefix else named
        return {key: self._valid_dataset(prefix) for key, prefix in prefixes.items()}

    def _valid_dataset(self, prefix: str):
        from megatron_bliss.data.training_dataset import DataSource, TrainingDataset

        per_rank = self.config.logging.eval_batches * self.config.train.micro_batch_size
        return TrainingDataset(
            [DataSource(prefix)],
            self.config.data.seq_length,
            per_rank * self.context.world_size,
            self.config.train.seed,
            vocab_size=self.vocab_size,
        )

    def _batch_options(self) -> BatchOptions:
        data = self.config.data
        eod = data.eod_token_id
        wanted = data.eod_mask_loss or data.reset_position_ids or data.reset_attention_mask
        if eod is None and self.tokenizer is not None and wanted:
            from megatron_bliss.data.tokenizer import resolve_eod_id

            eod = resolve_eod_id(self.tokenizer)
        flash = self.model.config._attn_implementation == "flash_attention_2"
        if data.reset_attention_mask and flash and not data.reset_position_ids:
            raise ConfigError(
                "data.reset_attention_mask with flash_attention_2 needs data.reset_position_ids "
                "(documents are separated by restarting position ids)"
            )
        options = BatchOptions(
            eod, data.eod_mask_loss, data.reset_position_ids, data.reset_attention_mask, flash
        )
        make_batch(np.zeros((1, 2), dtype=np.int64), options, torch.device("cpu"), torch.float32)
        return options

    def _initialize_engine(self):
        """The DeepSpeed engine around the model (set up for a universal load when the resume
        point is elastic)."""
        import deepspeed

        if self.resume_point is not None and self.resume_point.elastic:
            self.ds_config = with_universal_loading(self.ds_config)
        groups = parameter_groups(self.model, self.config.optimizer.weight_decay)
        engine, _, _, _ = deepspeed.initialize(
            model=self.model, model_parameters=groups, config=self.ds_config
        )
        return engine

    def _find_resume_point(self) -> ckpt.ResumePoint | None:
        """The checkpoint to resume from (None: a fresh start), checked against this run.

        Runs before the engine exists: an elastic resume needs an engine built for a universal
        load. Stops with one line when the checkpoint cannot continue here."""
        source = self.config.checkpoint.load
        if source is None:
            if not self.config.checkpoint.resume or not ckpt.has_step_folders(self.checkpoint_dir):
                return None
            source = str(self.checkpoint_dir)  # the newest complete one, with or without `latest`
        checkpoint_dir, tag = ckpt.resolve_checkpoint(source)
        meta = ckpt.read_meta(checkpoint_dir, tag)
        check_resumable(meta, self.config, self.model.config, checkpoint_dir / tag)
        elastic = ckpt.needs_universal(
            meta,
            self.context.world_size,
            self.zero_stage,
            checkpoint_dir / tag,
            self.config.checkpoint.elastic_resume,
        )
        return ckpt.ResumePoint(checkpoint_dir, tag, meta, elastic)

    def _resume(self) -> None:
        if self.resume_point is None:
            return
        checkpoint_dir, tag, meta, elastic = self.resume_point
        universal = None
        trust = self.config.checkpoint.trust
        if elastic:
            universal = ckpt.convert_to_universal(checkpoint_dir, tag, self.context, trust)
        meta = ckpt.load_checkpoint(
            self.engine, checkpoint_dir, tag, self.context.rank, universal=universal, trust=trust
        )
        self.step = int(meta["step"])
        self.consumed_samples = int(meta["consumed_samples"])
        if self.engine.global_steps != self.step:
            raise ValueError(
                f"{checkpoint_dir / tag}: DeepSpeed step {self.engine.global_steps} != {self.step}"
            )
        if elastic:
            ckpt.reseed_for_elastic_resume(self.config.train.seed, self.step, self.context.rank)
            logger.info(
                "elastic resume: %s was written by %d rank(s) with ZeRO-%d, this run has %d "
                "with ZeRO-%d; loaded through DeepSpeed's universal checkpoint %s, RNG re-seeded "
                "from (seed, step, rank)",
                checkpoint_dir / tag,
                int(meta["world_size"]),
                int(meta["zero_stage"]),
                self.context.world_size,
                self.zero_stage,
                checkpoint_dir / universal,
            )
        if self.context.is_main:
            truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
        logger.info(
            "resumed from %s: step %d, %d samples consumed",
            checkpoint_dir / tag,
            self.step,
            self.consumed_samples,
        )

    def _write_run_info(self) -> None:
        if not self.context.is_main:
            return
        info = {
            "world_size": self.context.world_size,
            "gradient_accumulation_steps": self.accumulation,
            "precision": self.precision,
            "device": self.device.type,
            "zero_stage": self.zero_stage,
            "attn_implementation": self.engine.module.config._attn_implementation,
            "flops_per_token": self.flops_per_token,
            "peak_flops_per_device": self.peak_flops,
            "deepspeed_config": self.ds_config,
            "model_config": self.engine.module.config.to_dict(),
        }
        atomic_write_json(self.run_dir / "run_info.json", info)

    # ---------------------------------------------------------------- loop
    def run(self, next_round: RoundBoundary | None = None) -> dict[str, Any]:
        """Train this round, then each round ``next_round`` returns, in this engine."""
        while True:
            summary = self._train_round()
            following = None
            if next_round is not None and not summary["interrupted"]:
                following = self._round_boundary(next_round, summary)
            if following is None:
                self.hooks.on_engine_final(self.engine)
                return summary
            self._start_round(following)

    def _train_round(self) -> dict[str, Any]:
        train = self.config.train
        progress = self._progress_bar()
        with PreemptionFlag() as preemption:
            while self.step < train.train_steps:
                metrics = self._train_and_log()
                progress.update(1)
                if "loss" in metrics:
                    progress.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")
                self.hooks.on_step_end(self.step, metrics)
                if self._validation_due():
                    self._validate()
                stop = self._stop_request(preemption)
                if self._checkpoint_due() or (stop is not None and stop.save):
                    self._save()
                if self.step == self.config.checkpoint.snapshot_step:
                    self._save_snapshot()
                if stop is not None:
                    progress.close()
                    return self._finish(stop)
        progress.close()
        interval = self.config.logging.eval_interval
        if interval and self.valid_datasets and self.step % interval:
            self._validate()
        if self.config.checkpoint.save_at_end and self.last_saved != self.step:
            self._save()
        return self._finish(None)

    def _train_and_log(self) -> dict[str, Any]:
        """One optimizer step. Its loss stays on the device unless the step logs: steps that do
        not log never wait for the device (no ``.item()``), so a GPU runs ahead of the host."""
        train = self.config.train
        lr = self._set_learning_rate()
        self.profiler.before_step(self.step + 1)
        logs = self._logs(self.step + 1)
        with self.timer.step(self.device if logs else None):
            self.pending_losses.append(self._train_step())
        self.step += 1
        self.profiler.after_step(self.step)
        self.consumed_samples += train.global_batch_size
        if not logs:
            return self._progress_metrics(lr)
        metrics = self._step_metrics(lr)
        self.sink.write(metrics)  # the last step too: short runs still leave a record
        return metrics

    def _logs(self, step: int) -> bool:
        return step % self.config.logging.log_interval == 0 or step == self.config.train.train_steps

    def _stop_request(self, preemption: PreemptionFlag) -> StopRequest | None:
        """A signal on any rank (every rank checkpoints and stops) or a hook's stop; both end in
        ``_finish`` with a summary marked interrupted, so nothing counts the stage finished."""
        signal_number = any_rank_signal(preemption.received or 0, self.context)
        if signal_number:
            return StopRequest(signal=signal_number, save=True)
        if self.hooks.should_stop(self.step):
            return StopRequest(signal=None, save=self.hooks.stop_with_checkpoint)
        return None

    def _progress_bar(self):
        from tqdm import tqdm

        return tqdm(
            total=self.config.train.train_steps,
            initial=self.step,
            desc="pretrain",
            unit="step",
            disable=not (self.context.is_main and self.config.logging.progress_bar),
            dynamic_ncols=True,
        )

    def _set_learning_rate(self) -> float:
        lr = learning_rate(
            self.step,
            self.config.schedule,
            self.config.optimizer.lr,
            self.config.optimizer.min_lr,
            self.config.train.train_steps,
        )
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _micro_batch(self, dataset, consumed: int, micro_step: int) -> dict[str, torch.Tensor]:
        indices = micro_batch_indices(
            consumed,
            micro_step,
            self.context.rank,
            self.context.world_size,
            self.config.train.micro_batch_size,
        )
        samples = np.stack([dataset[index] for index in indices])
        return make_batch(samples, self.batch_options, self.device, self.mask_dtype)

    def _forward_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels, loss_mask = batch.pop("labels"), batch.pop("loss_mask")
        if self.fused_loss is not None:
            with self.fused_loss.targets(labels, loss_mask):
                return self.fused_loss.loss(self.engine(**batch, use_cache=False))
        logits = self.engine(**batch, use_cache=False).logits
        return masked_lm_loss(logits, labels, loss_mask)

    def _train_step(self) -> torch.Tensor:
        """One optimizer step of ``accumulation`` micro-batches; returns the sum of this rank's
        micro-batch losses, still on the device."""
        self.engine.train()
        total = torch.zeros((), device=self.device)
        for micro_step in range(self.accumulation):
            batch = self._micro_batch(self.dataset, self.consumed_samples, micro_step)
            loss = self._forward_loss(batch)
            self.engine.backward(loss)
            self.engine.step()
            total += loss.detach().float()
        return total

    def _read_losses(self) -> None:
        """The pending steps' losses as floats (mean over micro-batches and ranks): one
        collective and one copy to the host for all of them."""
        if not self.pending_losses:
            return
        local = torch.stack(self.pending_losses).double() / self.accumulation
        self.pending_losses = []
        self.losses.extend(all_reduce_mean(local, self.context))

    def _progress_metrics(self, lr: float) -> dict[str, Any]:
        """What a step that does not log knows without asking the device."""
        return {
            "step": self.step,
            "lr": lr,
            "consumed_samples": self.consumed_samples,
            "consumed_tokens": self.consumed_samples * self.config.data.seq_length,
        }

    def _step_metrics(self, lr: float) -> dict[str, Any]:
        """The logged record: loss, gradient norm, throughput over the steps since the last log."""
        self._read_losses()
        step_time = self.timer.mean_and_reset()
        tokens_per_step = self.config.train.global_batch_size * self.config.data.seq_length
        tokens_per_second = tokens_per_step / max(step_time, 1e-9)
        grad_norm = self.engine.get_global_grad_norm()
        if isinstance(grad_norm, torch.Tensor):
            grad_norm = grad_norm.item()
        achieved = self.flops_per_token * tokens_per_second / self.context.world_size
        metrics = {
            **self._progress_metrics(lr),
            "loss": self.losses[-1],
            "grad_norm": float(grad_norm) if grad_norm is not None else math.nan,
            "step_time": step_time,
            "tokens_per_second": tokens_per_second,
            "mfu": achieved / self.peak_flops,
        }
        metrics.update(memory_stats(self.device))
        return metrics

    def _validation_due(self) -> bool:
        interval = self.config.logging.eval_interval
        return bool(interval) and bool(self.valid_datasets) and self.step % interval == 0

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        self.engine.eval()
        losses = {key: self._held_out_loss(dataset) for key, dataset in self.valid_datasets.items()}
        self.engine.train()
        means = dict(zip(losses, all_reduce_mean(list(losses.values()), self.context)))
        record = {
            "step": self.step,
            **means,
            "consumed_samples": self.consumed_samples,
            "consumed_tokens": self.consumed_samples * self.config.data.seq_length,
        }
        self.sink.write(record)
        self.hooks.on_validation(self.step, record)
        logger.info("step %d: %s", self.step, ", ".join(f"{k} {v:.4f}" for k, v in means.items()))
        return means

    def _held_out_loss(self, dataset) -> float:
        batches = range(self.config.logging.eval_batches)
        losses = [self._forward_loss(self._micro_batch(dataset, 0, b)).float() for b in batches]
        return float(np.mean(torch.stack(losses).double().cpu().numpy()))

    def _checkpoint_due(self) -> bool:
        interval = self.config.checkpoint.save_interval
        return bool(interval) and self.step % interval == 0

    def _write_checkpoint(self, directory: Path, keep_last: int) -> Path:
        meta = {
            "step": self.step,
            "consumed_samples": self.consumed_samples,
            "consumed_tokens": self.consumed_samples * self.config.data.seq_length,
            "world_size": self.context.world_size,
            "zero_stage": self.zero_stage,
            "precision": self.precision,
            "seq_length": self.config.data.seq_length,
            "preset": self.config.model.preset,
            "model_config": self.engine.module.config.to_dict(),
            "tokenizer": str(self.run_dir / "tokenizer") if self.tokenizer is not None else None,
        }
        if self.config.checkpoint.adam_state_params:  # before the shards: `latest` comes last
            save_adam_state(
                self.engine,
                directory / ckpt.tag_for(self.step),
                self.config.checkpoint.adam_state_params,
                self.context.rank,
            )
        return ckpt.save_checkpoint(
            self.engine, directory, self.step, meta, self.context.rank, keep_last
        )

    def _save(self) -> None:
        folder = self._write_checkpoint(self.checkpoint_dir, self.config.checkpoint.keep_last)
        self.last_saved = self.step
        self.hooks.on_checkpoint(str(folder))

    def _save_snapshot(self) -> None:
        """This step's state in ``RUN_DIR/snapshot/`` too, outside the resume chain (pruning
        ``checkpoints/`` never removes it): what a concurrent reader loads."""
        folder = self._write_checkpoint(self.run_dir / "snapshot", keep_last=1)
        logger.info("step %d: snapshot checkpoint %s", self.step, folder)
        self.hooks.on_snapshot(str(folder))

    def _finish(self, stop: StopRequest | None) -> dict[str, Any]:
        """The summary (also ``RUN_DIR/summary.json``). ``stop``: the run ended early, by a
        signal (``signal``: its number, received on any rank) or by a hook; then the summary is
        marked interrupted and no caller may count the stage finished."""
        self._read_losses()
        tokens = self.consumed_samples * self.config.data.seq_length
        summary = {
            "run_dir": str(self.run_dir),
            "final_step": self.step,
            "losses": list(self.losses),
            "final_loss": self.losses[-1] if self.losses else None,
            "consumed_samples": self.consumed_samples,
            "consumed_tokens": tokens,
            "flops": self.flops_per_token * tokens,
            "flops_per_token": self.flops_per_token,
            "checkpoint": str(self.checkpoint_dir) if (self.checkpoint_dir / "latest").exists()
            else None,
            "interrupted": stop is not None,
            "signal": stop.signal if stop is not None else None,
            "stopped_by": stop.reason if stop is not None else None,
            "world_size": self.context.world_size,
            "config": to_dict(self.config),
        }  # fmt: skip
        if self.context.is_main:
            atomic_write_json(self.run_dir / "summary.json", summary)
        self.context.barrier()
        self.hooks.on_train_end(summary)
        return summary

    # ---------------------------------------------------------------- rounds
    def _round_boundary(self, next_round: RoundBoundary, summary: dict[str, Any]):
        """Ask the hook for the next round, outside the signal handlers (a stop signal during
        the hook's work is the launcher's to handle) and with the training RNG states kept, so
        the next round draws what it would after loading this round's checkpoint."""
        folder = self.checkpoint_dir / ckpt.tag_for(self.step)
        end = RoundEnd(
            step=self.step,
            summary=summary,
            run_dir=self.run_dir,
            checkpoint=folder if folder.is_dir() else None,
            context=self.context,
            engine=self.engine,
        )
        rng = ckpt.rng_state()
        linear = torch.nn.functional.linear
        restore_functional_linear()  # the hook's own models use plain autograd (jvp included)
        try:
            following = next_round(end)
        finally:
            torch.nn.functional.linear = linear
            ckpt.set_rng_state(rng)
        return following

    def _start_round(self, following: NextRound) -> None:
        """Point this engine at the next round: its config, directory, data and sinks; the
        optimizer state, step and consumed samples carry on as a checkpoint load would give."""
        validate_static(following.config)
        check_in_place(self.config, following.config)
        self.config = following.config
        self.hooks = following.hooks or self.hooks
        self.run_dir = Path(self.config.run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        if self.context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            dump_yaml(self.config, self.run_dir / "config.yaml")
        self._check_data_files()
        self.tokenizer = self._load_tokenizer()
        self.dataset = self._dataset()
        self.valid_datasets = self._valid_datasets()
        self.losses, self.pending_losses = [], []
        self.timer = StepTimer()
        self.profiler.close()
        self.profiler = StepProfiler(
            self.config.logging.profile_steps, self.run_dir, self.context.rank, self.device.type
        )
        self.sink.close()
        if self.context.is_main:
            truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
        self._write_run_info()
        self.sink = MetricSink(self.run_dir, self.context.is_main, self.config.logging.tensorboard)
        self.last_saved = -1  # nothing of this round is saved yet
        logger.info(
            "round continues in the running engine at step %d: %s, until step %d",
            self.step, self.run_dir, self.config.train.train_steps,
        )  # fmt: skip

    def close(self) -> None:
        """Release the engine (ZeRO-3 hooks, optimizer state), the profiler and the metric sinks."""
        self.profiler.close()
        self.sink.close()
        if self.engine is not None:
            self.engine.destroy()
            self.engine.optimizer = None
            self.engine = None
        self.model = None
        self.dataset = None
        self.valid_datasets = {}
        restore_functional_linear()
        if self.restore_liger is not None:
            self.restore_liger()
            self.restore_liger = None


def restore_functional_linear() -> None:
    """Undo ZeRO-3's process-wide swap of ``torch.nn.functional.linear`` for its own autograd
    Function ("will persist unless manually reset"), which has no forward-mode AD and would break
    ``torch.func.jvp`` in selectors that run later in the same process (the pipeline)."""
    from deepspeed.runtime.zero.partition_parameters import InsertPostInitMethodToModuleSubClasses

    original = getattr(InsertPostInitMethodToModuleSubClasses, "linear_bk", None)
    if original is not None:
        torch.nn.functional.linear = original


def _count(model: torch.nn.Module) -> int:
    return sum(int(getattr(p, "ds_numel", p.numel())) for p in model.parameters())
