"""Reducible loss (RHO-LOSS, Mindermann et al. 2022; CoLoR-Filter, Brandfonbrener et al. 2024).

``score(x) = L_target(x) - L_reference(x)``: the frozen target's loss on a pool sequence minus the
loss of a copy of it briefly fine-tuned on the target set. Sequences the target set teaches the
copy to predict score high; noise that no training makes predictable (shuffled words, random
characters) scores near zero whatever its loss, and text the target already knows scores low.
To first order in the fine-tuning step, the score is the alignment of the sequence's gradient with
the Adam step on the target set, so it is the multi-step, finite-step form of that alignment.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch

from megatron_bliss.errors import ConfigError
from megatron_bliss.selection.base import Selector
from megatron_bliss.selection.perplexity import pool_losses, require_target_model
from megatron_bliss.selection.proxy import cosine_with_warmup, target_loss_sum

logger = logging.getLogger(__name__)


class ReducibleSelector(Selector):
    name = "reducible"

    @dataclass
    class Config:
        steps: int = 50
        """AdamW steps of the reference copy on the target set."""
        lr: float = 1e-3
        batch_size: int = 16
        """Target-set examples per fine-tuning step."""
        weight_decay: float = 0.0
        score_batch_size: int = 32
        """Pool sequences per forward pass when scoring (two passes: target and reference)."""

        def __post_init__(self):
            for name in ("steps", "batch_size", "score_batch_size"):
                if getattr(self, name) < 1:
                    raise ValueError(f"{name} must be >= 1")
            if not self.lr > 0:
                raise ValueError(f"lr must be > 0, got {self.lr}")

    def __init__(self, config, context):
        super().__init__(config, context)
        self.reference: torch.nn.Module | None = None

    def fit(self) -> None:
        target = require_target_model(self.context, self.name)
        if self.context.target_set is None:
            raise ConfigError("reducible: needs a target set (--target-data)")
        self.reference = self._fine_tune(copy.deepcopy(target))

    def _fine_tune(self, model: torch.nn.Module) -> torch.nn.Module:
        c, target_set = self.config, self.context.target_set
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        model.train()
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=c.lr, betas=(0.9, 0.95), weight_decay=c.weight_decay
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(c.steps, 0.1))
        rng = np.random.default_rng([self.context.seed, 31])
        loss = float("nan")
        for _ in range(c.steps):
            input_ids, labels = target_set.sample(c.batch_size, rng)
            input_ids, labels = input_ids.to(self.context.device), labels.to(self.context.device)
            loss_sum, count = target_loss_sum(model, input_ids, labels)
            optimizer.zero_grad(set_to_none=True)
            (loss_sum / max(count, 1)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            loss = float(loss_sum.detach()) / max(count, 1)
            self.spend("training", model, input_ids.numel(), "train", input_ids.shape[1])
        logger.info("reducible: reference fine-tuned %d steps on the target set (loss %.4f)",
                    c.steps, loss)  # fmt: skip
        return model.eval()

    def score(self) -> np.ndarray:
        if self.reference is None:
            self.fit()
        pool, device = self.context.pool, self.context.device
        target = require_target_model(self.context, self.name)
        size = self.config.score_batch_size
        before = pool_losses(target, pool, device, size, desc="reducible: target loss")
        after = pool_losses(self.reference, pool, device, size, desc="reducible: reference loss")
        for model in (target, self.reference):
            self.spend("scoring", model, len(pool) * pool.seq_length)
        return (before - after).astype(np.float32)
