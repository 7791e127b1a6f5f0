"""Perplexity filtering: keep the pool sequences the frozen target model finds easy (or typical).

``score = -loss`` keeps low-perplexity text (the classic filter); ``band = "middle"`` scores
``-|loss - median|`` and keeps the middle of the perplexity distribution, the variant that the
perplexity-pruning literature (Marion et al. 2023; Ankner et al. 2024) finds more robust than the
extremes. Losses are per-sequence means of next-token cross-entropy over the pool's fixed-length
sequences, computed in batches under ``torch.inference_mode``.

``pool_losses`` here is shared by the other baselines.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from megatron_bliss.errors import ConfigError
from megatron_bliss.selection.base import Selector
from megatron_bliss.selection.proxy import sequence_losses

logger = logging.getLogger(__name__)

BANDS = ("low", "middle")


def require_target_model(context, method: str) -> torch.nn.Module:
    """The frozen target model of ``context``, or a one-line error naming the method."""
    if context.target_model is None:
        raise ConfigError(f"{method}: needs a target model (--target-model or a config warm-up)")
    return context.target_model


def pool_losses(
    model: torch.nn.Module,
    pool,
    device: torch.device,
    batch_size: int = 8,
    indices: np.ndarray | None = None,
    desc: str = "pool loss",
) -> np.ndarray:
    """Per-sequence mean loss of ``model`` over ``pool`` (or the given ``indices``), float64."""
    indices = np.arange(len(pool)) if indices is None else np.asarray(indices)
    losses = np.zeros(len(indices), dtype=np.float64)
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.inference_mode(), autocast:
        starts = range(0, len(indices), batch_size)
        for start in tqdm(starts, desc=desc, disable=len(starts) < 20, leave=False):
            chunk = indices[start : start + batch_size]
            tokens = torch.from_numpy(pool.batch(chunk)).to(device)
            losses[start : start + len(chunk)] = sequence_losses(model, tokens).double().cpu()
    model.train(was_training)
    return losses


def loss_to_score(losses: np.ndarray, band: str) -> np.ndarray:
    """``-loss`` (band ``low``) or ``-|loss - median|`` (band ``middle``), float32."""
    if band == "low":
        return (-losses).astype(np.float32)
    if band == "middle":
        return (-np.abs(losses - np.median(losses))).astype(np.float32)
    raise ConfigError(f"perplexity band must be one of {', '.join(BANDS)}, got '{band}'")


class PerplexitySelector(Selector):
    """Scores every pool sequence by the frozen target model's loss on it."""

    name = "perplexity"
    needs_target_set = False

    @dataclass
    class Config:
        band: str = "low"
        """``low``: keep low-perplexity text; ``middle``: keep text nearest the median loss."""
        batch_size: int = 16
        """Sequences per forward pass (paper scale, ctx 1024 on one GPU: 16-32)."""

    def score(self) -> np.ndarray:
        if self.config.band not in BANDS:
            raise ConfigError(f"perplexity band must be one of {', '.join(BANDS)}")
        model = require_target_model(self.context, self.name)
        pool = self.context.pool
        losses = pool_losses(model, pool, self.context.device, self.config.batch_size)
        self.spend("scoring", model, len(pool) * pool.seq_length)
        logger.info(
            "perplexity: %d sequences, loss mean %.4f median %.4f",
            len(losses),
            losses.mean() if len(losses) else float("nan"),
            np.median(losses) if len(losses) else float("nan"),
        )
        return loss_to_score(losses, self.config.band)
