"""The stand-in target: what ``select`` selects for when no ``--target-model`` is given.

A short warm-up of ``target_preset`` on random pool sequences, saved under
``RUN_DIR/target_warmup/`` with the settings that made it (``stand_in.json``), so a rerun with the
same settings reuses it and a rerun with other settings warms up a new one. The save goes to a
temporary name first, so a killed save is never reused.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from megatron_bliss.engine.distributed import rank
from megatron_bliss.selection.config import SelectConfig
from megatron_bliss.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

RECORD = "stand_in.json"


def stand_in_settings(config: SelectConfig, pool, vocab: int) -> dict[str, Any]:
    """What a saved stand-in target was made from; a rerun with other settings retrains it."""
    return {
        "preset": config.target_preset, "vocab": vocab, "seq_length": config.seq_length,
        "steps": config.target_warmup_steps, "lr": config.target_warmup_lr,
        "batch_size": config.target_warmup_batch_size, "seed": config.seed,
        "data_prefix": str(pool.prefix), "num_sequences": len(pool),
    }  # fmt: skip


def saved_stand_in(run_dir: Path, settings: dict[str, Any]) -> Path | None:
    """The stand-in saved under ``run_dir`` by the same settings, if there is one."""
    saved = run_dir / "target_warmup"
    record = saved / RECORD
    if record.exists() and json.loads(record.read_text()) == settings:
        return saved
    if saved.exists():
        logger.info("%s was made with other settings: warming up a new stand-in target", saved)
    return None


def stand_in_target(
    config: SelectConfig, pool, tokenizer, run_dir: Path, device
) -> torch.nn.Module:
    """The frozen stand-in target (reused from ``run_dir`` when saved by the same settings)."""
    from transformers import AutoModelForCausalLM

    from megatron_bliss.models.presets import build_model, padded_vocab_size
    from megatron_bliss.selection.proxy import freeze, warmup_lm

    vocab = padded_vocab_size(max(len(tokenizer), pool.max_token_id() + 1))
    settings = stand_in_settings(config, pool, vocab)
    saved = saved_stand_in(run_dir, settings)
    if saved is not None:
        logger.info("reusing the stand-in target in %s", saved)
        return freeze(AutoModelForCausalLM.from_pretrained(saved).to(device))
    torch.manual_seed(config.seed)
    model = build_model(config.target_preset, vocab, config.seq_length + 1)
    warmup_lm(
        model, pool, steps=config.target_warmup_steps, batch_size=config.target_warmup_batch_size,
        lr=config.target_warmup_lr, seed=config.seed + 2, device=device, desc="target warm-up",
    )  # fmt: skip
    if rank() == 0:
        _save(model, settings, run_dir / "target_warmup")
    return freeze(model)


def _save(model: torch.nn.Module, settings: dict[str, Any], destination: Path) -> None:
    staging = destination.with_name(f".{destination.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    atomic_write_text(staging / RECORD, json.dumps(settings, indent=2))
    shutil.rmtree(destination, ignore_errors=True)
    staging.rename(destination)
