"""``megatron-bliss select``: train whatever a method needs, score a shard, keep a fraction.

    megatron-bliss select --method bliss --config configs/select_tiny_cpu.yaml \\
        --data-prefix out/c4_text_document --target-data target.jsonl --tokenizer tok/ \\
        --run-dir runs/select bliss.outer_steps=50
    torchrun --nproc_per_node 2 -m megatron_bliss.cli select --method bliss ...

Every method goes through ``registry.get_selector_class``; its section of the YAML (``bliss:``,
``mates:``, ``dsir:`` ...) is validated by that selector's ``Config``. Writes ``RUN_DIR/config.yaml``
(resolved), ``scores.npy``, ``selection.npy``, ``selection.json`` and, for learned scorers,
``score_model/``. The pipeline calls ``run_selection`` directly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from megatron_bliss.config import (
    ConfigError,
    from_dict,
    load_config,
    naming_override,
    parse_overrides,
)
from megatron_bliss.selection.registry import SELECTORS, get_selector_class
from megatron_bliss.utils.dirs import check_dir_creatable, ensure_dir
from megatron_bliss.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

NO_TARGET_MODEL = {"random", "dsir"}  # methods that never look at the target model
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass
class SelectConfig:
    """What every method shares; per-method sections hold that selector's Config fields."""

    seq_length: int = 1024
    """Sequence length of the pool view of the shard (CONTRACT.md: sequence pool)."""
    target_preset: str = "pythia-1b"
    """Preset of the model being pretrained (proxies follow its family); also the stand-in
    target built when no --target-model is given."""
    target_warmup_steps: int = 200
    """Stand-in target only: plain training steps on random pool sequences."""
    target_warmup_lr: float = 1e-3
    target_warmup_batch_size: int = 16
    target_max_length: int = 1024
    """Target-set examples are truncated (from the left) to this many tokens."""
    target_limit: int | None = None
    """Use only the first N target-set examples (none: all)."""
    device: str = "auto"
    """``auto``: cuda:LOCAL_RANK when available, else cpu."""
    fraction: float = 0.2
    seed: int = 0
    gumbel_temperature: float = 0.0
    bliss: dict = field(default_factory=dict)
    influence: dict = field(default_factory=dict)
    random: dict = field(default_factory=dict)
    dsir: dict = field(default_factory=dict)
    perplexity: dict = field(default_factory=dict)
    mates: dict = field(default_factory=dict)
    reducible: dict = field(default_factory=dict)


def method_config(config: SelectConfig, method: str, where: str = "config"):
    """The typed Config of ``method`` from its section (unknown keys are errors)."""
    selector_class = get_selector_class(method)
    return from_dict(selector_class.Config, getattr(config, method), where=f"{where}: {method}")


def validate_sections(config: SelectConfig, where: str) -> None:
    """Check every non-empty method section whose selector is available."""
    for method in SELECTORS:
        if not getattr(config, method):
            continue
        try:
            get_selector_class(method)
        except ImportError:
            logger.warning("%s: section '%s' not checked (selector not importable)", where, method)
            continue
        method_config(config, method, where)


def load_select_config(path: str | Path | None, overrides: list[str] | None = None):
    config = load_config(SelectConfig, path, overrides)
    try:
        validate_sections(config, str(path or "config"))
    except ConfigError as error:
        raise naming_override(error, overrides) from None
    return config


def load_tokenizer(name_or_path: str | Path):
    """The project's loader (HF dir or hub name, tokenizers ``*.json``, sentencepiece ``*.model``),
    with GPT-NeoX's ``<|padding|>`` as the pad token when the file names none."""
    from megatron_bliss.data.tokenizer import load_tokenizer as load

    tokenizer = load(str(name_or_path))
    if getattr(tokenizer, "pad_token", None) is None and "<|padding|>" in tokenizer.get_vocab():
        tokenizer.pad_token = "<|padding|>"
    return tokenizer


def tokenizer_of_target(target_model: Path):
    """The tokenizer saved with a --target-model: in a Hugging Face directory, or the run's copy
    for a DeepSpeed checkpoint; None when there is none."""
    if any((target_model / name).exists() for name in TOKENIZER_FILES):
        return load_tokenizer(target_model)
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
        raise ValueError(
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


def resolve_device(name: str) -> torch.device:
    from megatron_bliss.selection.scoring import default_device

    return torch.device(default_device() if name == "auto" else name)


def stand_in_settings(config: SelectConfig, pool, vocab: int) -> dict[str, Any]:
    """What a saved stand-in target was made from; a rerun with other settings retrains it."""
    return {
        "preset": config.target_preset, "vocab": vocab, "seq_length": config.seq_length,
        "steps": config.target_warmup_steps, "lr": config.target_warmup_lr,
        "batch_size": config.target_warmup_batch_size, "seed": config.seed,
        "data_prefix": str(pool.prefix), "num_sequences": len(pool),
    }  # fmt: skip


def stand_in_target(
    config: SelectConfig, pool, tokenizer, run_dir: Path, device
) -> torch.nn.Module:
    """A short warm-up of ``target_preset`` on random pool sequences (reused when saved before
    from the same settings; saved under a temporary name, so a killed save is never reused)."""
    import shutil

    from transformers import AutoModelForCausalLM

    from megatron_bliss.models.presets import build_model, padded_vocab_size
    from megatron_bliss.selection.proxy import freeze, warmup_lm

    saved = run_dir / "target_warmup"
    vocab = padded_vocab_size(max(len(tokenizer), pool.max_token_id() + 1))
    settings = stand_in_settings(config, pool, vocab)
    record = saved / "stand_in.json"
    if record.exists() and json.loads(record.read_text()) == settings:
        logger.info("reusing the stand-in target in %s", saved)
        return freeze(AutoModelForCausalLM.from_pretrained(saved).to(device))
    if saved.exists():
        logger.info("%s was made with other settings: warming up a new stand-in target", saved)
    torch.manual_seed(config.seed)
    model = build_model(config.target_preset, vocab, config.seq_length + 1)
    warmup_lm(
        model, pool, steps=config.target_warmup_steps, batch_size=config.target_warmup_batch_size,
        lr=config.target_warmup_lr, seed=config.seed + 2, device=device, desc="target warm-up",
    )  # fmt: skip
    from megatron_bliss.selection.hypergrad import rank

    if rank() == 0:
        staging = run_dir / ".target_warmup.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        atomic_write_text(staging / "stand_in.json", json.dumps(settings, indent=2))
        shutil.rmtree(saved, ignore_errors=True)
        staging.rename(saved)
    return freeze(model)


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
    from megatron_bliss.config import merge
    from megatron_bliss.data.pool import SequencePool
    from megatron_bliss.data.target_set import TargetSet
    from megatron_bliss.selection.base import SelectionContext
    from megatron_bliss.selection.hypergrad import rank
    from megatron_bliss.selection.proxy import load_target_model
    from megatron_bliss.selection.rule import check_selection_settings, write_selection

    if not isinstance(config, SelectConfig):
        config = load_select_config(config, overrides)
    elif overrides:
        config = from_dict(
            SelectConfig, merge(dataclasses.asdict(config), parse_overrides(overrides))
        )
    cli_values = {"fraction": fraction, "seed": seed, "gumbel_temperature": gumbel_temperature}
    config = dataclasses.replace(config, **{k: v for k, v in cli_values.items() if v is not None})
    selector_config = method_config(config, method)
    check_selection_settings(config.fraction, config.gumbel_temperature)
    check_dir_creatable(run_dir, "--run-dir")
    pool = SequencePool(data_prefix, config.seq_length).require_sequences()
    device = resolve_device(config.device)
    if isinstance(tokenizer, str | Path):
        tokenizer = load_tokenizer(tokenizer)
    if tokenizer is None and isinstance(target_model, str | Path):
        tokenizer = tokenizer_of_target(Path(target_model))
    if tokenizer is not None:
        check_tokenizer_fits(pool, tokenizer)
    target_set = None
    if target_data is not None:
        if tokenizer is None:
            raise ValueError("--target-data needs --tokenizer (or a --target-model with one)")
        target_set = TargetSet.from_jsonl(
            target_data, tokenizer, target_format, config.target_max_length, config.target_limit
        )
    if isinstance(target_model, str | Path) and method in NO_TARGET_MODEL:
        logger.info("%s does not use --target-model: not loading %s", method, target_model)
        target_model = None
    elif isinstance(target_model, str | Path):
        target_model = load_target_model(target_model, device)
    run_dir = Path(run_dir)  # created only once the inputs have been checked
    ensure_dir(run_dir, "--run-dir")
    if target_model is None and method not in NO_TARGET_MODEL:
        if tokenizer is None:
            raise ValueError("select without --target-model needs --tokenizer")
        target_model = stand_in_target(config, pool, tokenizer, run_dir, device)
    resolved = {k: v for k, v in dataclasses.asdict(config).items() if k not in SELECTORS}
    resolved.update(method=method, data_prefix=str(data_prefix), target_data=str(target_data))
    resolved[method] = dataclasses.asdict(selector_config)
    if rank() == 0:
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    context = SelectionContext(
        pool=pool, run_dir=run_dir, target_set=target_set, target_model=target_model,
        tokenizer=tokenizer, device=device, seed=config.seed, model_preset=config.target_preset,
    )  # fmt: skip
    selector = get_selector_class(method)(selector_config, context)
    start = time.perf_counter()
    selector.fit()
    scores = np.asarray(selector.score(), dtype=np.float32)
    if scores.shape != (len(pool),):
        raise ValueError(f"{method}: scored {scores.shape} for a pool of {len(pool)} sequences")
    seconds = time.perf_counter() - start
    selection = _select(scores, config)
    if rank() == 0:
        selector.save(run_dir)
        selection = write_selection(
            run_dir, scores, method=method, fraction=config.fraction, data_prefix=data_prefix,
            seq_length=config.seq_length, seed=config.seed,
            gumbel_temperature=config.gumbel_temperature,
            extra={
                "flops": selector.total_flops, "flops_by_kind": dict(selector.flops),
                "seconds": round(seconds, 2), **selector.summary(),
            },
        )  # fmt: skip
    logger.info("%s: kept %d of %d sequences in %.1fs", method, len(selection), len(pool), seconds)
    return selection


def _select(scores: np.ndarray, config: SelectConfig) -> np.ndarray:
    from megatron_bliss.selection.rule import select_top_fraction

    return select_top_fraction(scores, config.fraction, config.seed, config.gumbel_temperature)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, choices=sorted(SELECTORS))
    parser.add_argument("--config", default=None, help="YAML (e.g. configs/select_tiny_cpu.yaml)")
    parser.add_argument("--data-prefix", required=True, help="indexed shard to select from")
    parser.add_argument("--target-data", default=None, help="target set, JSON lines")
    parser.add_argument(
        "--target-format", default="documents",
        choices=["documents", "last_word", "prompt_continuation"],
    )  # fmt: skip
    parser.add_argument("--tokenizer", default=None, help="HF tokenizer dir/name or tokenizer.json")
    parser.add_argument("--target-model", default=None, help="HF dir or DeepSpeed checkpoint")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--fraction", type=float, default=None, help="kept fraction (default 0.2)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--gumbel-temperature", type=float, default=None)
    parser.add_argument("overrides", nargs="*", help="key=value or section.key=value")


def run(args: argparse.Namespace) -> int:
    from megatron_bliss.selection.scoring import init_distributed_from_env

    for item in args.overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value")
    init_distributed_from_env()
    run_selection(
        args.method, args.config, data_prefix=args.data_prefix, run_dir=args.run_dir,
        target_data=args.target_data, target_format=args.target_format,
        tokenizer=args.tokenizer, target_model=args.target_model, overrides=args.overrides,
        fraction=args.fraction, seed=args.seed, gumbel_temperature=args.gumbel_temperature,
    )  # fmt: skip
    return 0
