"""MATES: model-aware data selection with a data influence model (Yu, Das, Xiong, NeurIPS 2024).

1. **Oracle labels by local probing.** From the frozen target checkpoint, take ONE AdamW step on a
   probe sequence alone (batch 1; lr, betas (0.9, 0.95), weight decay 0.1, clip 1.0), then
   measure the loss on a fixed sample of the target set. Model and optimizer state are restored
   before every probe: the probe runs on a private copy of the target model, and the frozen
   original doubles as the in-memory snapshot it is restored from (a ``copy_`` per tensor).
2. **Data influence model.** A small regressor learns probe -> post-step target loss. MATES
   fine-tunes ``bert-base-uncased``; this project stays inside its own model family and
   tokenizer instead: a small backbone of the target's family from ``models.presets`` (default
   ``pythia-14m`` / ``llama-tiny``, trained from scratch), mean pooling over tokens and a linear
   head, MSE on z-scored labels, 90/10 split, best epoch by held-out Spearman correlation.
3. **Scoring.** The regressor is the project's shared ``ScoreModel`` (backbone, mean pooling,
   linear head, sigmoid) trained so that its logit predicts the *negated* z-scored label, so the
   score (the logit) is monotone in -predicted post-step loss (higher = more useful) and
   the saved ``score_model/`` is read by ``megatron-bliss score`` unchanged. The selection rule's
   Gumbel-top-k (MATES: temperature 0.5 on the raw prediction) picks the subset.

Probes come from ``probe_prefix`` when it is set -- an indexed shard disjoint from the ones being
selected, as MATES probes C4 files 800-899 -- else from the pool being scored. Difference from the
paper, on purpose: the optimizer starts from a fresh AdamW state unless ``ProbeRunner`` is given one
(the selection context carries the model, not its optimizer).
"""

from __future__ import annotations

import copy
import functools
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from megatron_bliss.data.pool import SequencePool
from megatron_bliss.data.target_set import TargetSet
from megatron_bliss.errors import ConfigError, InputError
from megatron_bliss.models.presets import build_config, get_preset
from megatron_bliss.selection.base import Selector
from megatron_bliss.selection.perplexity import require_target_model
from megatron_bliss.selection.proxy import sequence_losses, target_loss_sum
from megatron_bliss.selection.score_model import ScoreModel, build_backbone, load_score_model
from megatron_bliss.selection.scoring import score_pool
from megatron_bliss.utils.io import atomic_save_npy
from megatron_bliss.utils.stats import spearman

logger = logging.getLogger(__name__)

FAMILY_REGRESSOR = {"pythia": "pythia-14m", "llama": "llama-tiny"}


@dataclass
class ProbeSettings:
    """The one AdamW step of a probe (MATES: the checkpoint's LR, wd 0.1, betas (0.9, 0.95))."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0


def target_loss(
    model: torch.nn.Module,
    target_set: TargetSet,
    indices: np.ndarray,
    batch_size: int,
    device: torch.device,
) -> float:
    """Token-weighted mean loss over the scored tokens of ``target_set[indices]``."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            input_ids, labels = target_set.batch(indices[start : start + batch_size])
            loss_sum, scored = target_loss_sum(model, input_ids.to(device), labels.to(device))
            total += loss_sum.item()
            count += scored
    return total / max(count, 1)


class ProbeRunner:
    """One-step AdamW probes from a fixed starting state, restored exactly before every probe."""

    def __init__(
        self,
        reference: torch.nn.Module,
        settings: ProbeSettings,
        optimizer_state: dict | None = None,
    ):
        self.reference = reference
        self.model = copy.deepcopy(reference)
        self.model.eval()  # no dropout: a probe is a deterministic function of its sequence
        for parameter in self.model.parameters():
            parameter.requires_grad_(True)
        self.settings = settings
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=settings.lr,
            betas=(settings.beta1, settings.beta2),
            eps=settings.eps,
            weight_decay=settings.weight_decay,
        )
        self.optimizer_state = copy.deepcopy(optimizer_state) if optimizer_state else None
        self.restore()

    def restore(self) -> None:
        """Reset weights to the reference model and the optimizer to its starting state."""
        with torch.no_grad():
            for probe, frozen in zip(self.model.parameters(), self.reference.parameters()):
                probe.copy_(frozen)
                probe.grad = None
        self.optimizer.state.clear()
        if self.optimizer_state is not None:
            self.optimizer.load_state_dict(copy.deepcopy(self.optimizer_state))

    def step(self, tokens: torch.Tensor) -> None:
        """One clipped AdamW step on ``tokens`` (shape ``[L + 1]``) alone."""
        loss = sequence_losses(self.model, tokens[None]).mean()
        loss.backward()
        if self.settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def probe(self, tokens: torch.Tensor, measure) -> float:
        """``measure(model)`` after one step on ``tokens``; the state is restored afterwards."""
        self.step(tokens)
        value = measure(self.model)
        self.restore()
        return value


def predict(
    regressor: ScoreModel,
    pool,
    indices: np.ndarray,
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """Regressor logits (predicted usefulness = -z-scored post-step loss) for ``pool[indices]``."""
    regressor.eval()
    out = np.zeros(len(indices), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(indices), batch_size):
            tokens = torch.from_numpy(pool.batch(indices[start : start + batch_size])).to(device)
            out[start : start + len(tokens)] = regressor.logits(tokens[:, : pool.seq_length]).cpu()
    return out


def score_pool_with_saved_model(directory: str | Path, pool, device=None, batch_size: int = 64):
    """Scores of every ``pool`` sequence with a saved regressor (what ``score --scorer`` gives)."""
    device = device or torch.device("cpu")
    return score_pool(load_score_model(directory, device), pool, batch_size, device, "float32")


class MatesSelector(Selector):
    """Probe oracle labels, fit the data influence model, score the pool with it."""

    name = "mates"
    data_parallel = True  # the pool is scored in slices, all-reduced (scoring.score_pool)

    @dataclass
    class Config:
        num_probes: int = 80000
        """Oracle labels per stage (MATES: 10k per GPU x 8 GPUs)."""
        probe_prefix: str = ""
        """Indexed shard the probes are drawn from, disjoint from the selection shards (MATES: C4
        files 800-899); empty: the pool being scored."""
        probe_lr: float = 1e-3
        """LR of the probe step (MATES: the WSD schedule's constant LR)."""
        probe_beta1: float = 0.9
        probe_beta2: float = 0.95
        probe_weight_decay: float = 0.1
        probe_grad_clip: float = 1.0
        target_examples: int = 1024
        """Target-set examples the post-step loss is measured on (MATES: 1024 LAMBADA)."""
        target_batch_size: int = 32
        regressor_preset: str = ""
        """Backbone preset; empty: ``pythia-14m`` / ``llama-tiny`` by the target's family."""
        regressor_lr: float = 5e-4
        regressor_epochs: int = 5
        regressor_batch_size: int = 32
        regressor_weight_decay: float = 0.01
        holdout_fraction: float = 0.1
        """Share of probes held out for Spearman and best-epoch choice (MATES: 10%)."""
        score_batch_size: int = 64

    def __init__(self, config, context):
        super().__init__(config, context)
        self.regressor: ScoreModel | None = None
        self.metrics: dict = {}
        self.probe_indices: np.ndarray | None = None
        self.labels: np.ndarray | None = None

    @functools.cached_property
    def probe_pool(self) -> SequencePool:
        """The sequences probes (and the regressor's training rows) come from."""
        prefix, pool = self.config.probe_prefix, self.context.pool
        return SequencePool(prefix, pool.seq_length) if prefix else pool

    # -- oracle labels -------------------------------------------------------------------
    def probe_settings(self) -> ProbeSettings:
        c = self.config
        return ProbeSettings(
            lr=c.probe_lr,
            beta1=c.probe_beta1,
            beta2=c.probe_beta2,
            weight_decay=c.probe_weight_decay,
            grad_clip=c.probe_grad_clip,
        )

    def oracle_labels(self, indices: np.ndarray) -> np.ndarray:
        """Target-set loss after one AdamW step on each ``probe_pool[i]``, float64."""
        context, model = self.context, require_target_model(self.context, self.name)
        if context.target_set is None:
            raise ConfigError("mates: needs a target set (--target-data)")
        rng = np.random.default_rng(context.seed)
        num_target = min(self.config.target_examples, len(context.target_set))
        target_indices = np.sort(rng.choice(len(context.target_set), num_target, replace=False))

        def measure(probed):
            return target_loss(
                probed,
                context.target_set,
                target_indices,
                self.config.target_batch_size,
                context.device,
            )

        runner = ProbeRunner(model, self.probe_settings())
        labels = np.zeros(len(indices), dtype=np.float64)
        for row, index in enumerate(tqdm(indices, desc="mates probes", disable=len(indices) < 50)):
            tokens = torch.from_numpy(self.probe_pool[int(index)]).to(context.device)
            labels[row] = runner.probe(tokens, measure)
        target_tokens = sum(len(context.target_set.examples[i].input_ids) for i in target_indices)
        self.spend("training", model, len(indices) * context.pool.seq_length, "train")
        self.spend("training", model, len(indices) * target_tokens)
        return labels

    # -- data influence model ------------------------------------------------------------
    def regressor_preset(self) -> str:
        if self.config.regressor_preset:
            return self.config.regressor_preset
        return FAMILY_REGRESSOR[self.context.target_family()]

    def build_regressor(self) -> ScoreModel:
        vocab = self.context.target_model.get_input_embeddings().weight.shape[0]
        preset = self.regressor_preset()
        positions = max(get_preset(preset).max_positions, self.context.pool.seq_length)
        config = build_config(preset, vocab_size=vocab, max_positions=positions)
        torch.manual_seed(self.context.seed)
        return ScoreModel(build_backbone(config), seed=self.context.seed).to(self.context.device)

    def train_regressor(self, indices: np.ndarray, labels: np.ndarray) -> None:
        """MSE of the logit on the negated z-scored labels (so higher = more useful); keeps the
        epoch with the best held-out Spearman correlation between logit and -label."""
        c, device, pool = self.config, self.context.device, self.probe_pool
        rng = np.random.default_rng(self.context.seed + 1)
        order = rng.permutation(len(indices))
        num_holdout = max(1, round(c.holdout_fraction * len(indices))) if len(indices) > 4 else 0
        held, train = order[:num_holdout], order[num_holdout:]
        mean, std = float(labels[train].mean()), float(labels[train].std() + 1e-8)
        targets = torch.tensor(-(labels - mean) / std, dtype=torch.float32)
        regressor = self.build_regressor()
        optimizer = torch.optim.AdamW(
            regressor.parameters(), lr=c.regressor_lr, weight_decay=c.regressor_weight_decay
        )
        best = (-np.inf, copy.deepcopy(regressor.state_dict()), -1)
        for epoch in range(c.regressor_epochs):
            regressor.train()
            epoch_rows = train[rng.permutation(len(train))]
            for start in range(0, len(epoch_rows), c.regressor_batch_size):
                rows = epoch_rows[start : start + c.regressor_batch_size]
                tokens = torch.from_numpy(pool.batch(indices[rows])).to(device)
                logits = regressor.logits(tokens[:, : pool.seq_length]).float()
                loss = F.mse_loss(logits, targets[rows].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            held_rho = spearman(
                predict(regressor, pool, indices[held], c.score_batch_size, device), -labels[held]
            )
            logger.info("mates regressor epoch %d: held-out spearman %.4f", epoch, held_rho)
            if len(held) == 0 or np.isnan(held_rho) or held_rho > best[0]:
                best = (held_rho, copy.deepcopy(regressor.state_dict()), epoch)
        regressor.load_state_dict(best[1])
        self.regressor = regressor
        epochs_tokens = c.regressor_epochs * pool.seq_length
        self.spend("training", regressor, len(train) * epochs_tokens, "train", lm_head=False)
        self.spend("training", regressor, len(held) * epochs_tokens, lm_head=False)
        self.metrics = {
            "num_probes": len(indices),
            "num_train": len(train),
            "num_holdout": len(held),
            "holdout_spearman": float(best[0]),
            "best_epoch": best[2],
            "label_mean": mean,
            "label_std": std,
            "regressor_preset": self.regressor_preset(),
        }

    def fit(self) -> None:
        pool = self.probe_pool
        num_probes = min(self.config.num_probes, len(pool))
        if num_probes < 2:
            raise InputError(
                f"mates: needs at least 2 probes, {self.config.probe_prefix or 'the pool'} has "
                f"{len(pool)} sequences"
            )
        rng = np.random.default_rng(self.context.seed)
        self.probe_indices = np.sort(rng.choice(len(pool), num_probes, replace=False))
        self.labels = self.oracle_labels(self.probe_indices)
        self.train_regressor(self.probe_indices, self.labels)
        logger.info("mates: %s", self.metrics)

    def score(self) -> np.ndarray:
        """The predicted usefulness (logit) of every pool sequence (monotone in -predicted
        post-step target loss), float32: the same numbers ``megatron-bliss score`` gives."""
        if self.regressor is None:
            self.fit()
        pool = self.context.pool
        scores = score_pool(
            self.regressor, pool, self.config.score_batch_size, self.context.device, "float32"
        )
        self.spend("scoring", self.regressor, len(pool) * pool.seq_length, lm_head=False)
        return scores

    def save(self, run_dir: Path) -> None:
        """The regressor under ``run_dir/score_model/`` in the shared score-model format (so
        ``megatron-bliss score --scorer`` reads it), plus the probe labels and metrics."""
        if self.regressor is None:
            raise ValueError("mates: nothing to save before fit()")
        directory = Path(run_dir) / "score_model"
        metadata = {
            "method": self.name,
            "seq_length": self.context.pool.seq_length,
            "score": "-(predicted z-scored target loss after one AdamW step)",
            "pooling": "mean",
            "probe": asdict(self.probe_settings()),
            **self.metrics,
        }
        self.regressor.save(directory, metadata, tokenizer=self.context.tokenizer)
        labels = np.stack([self.probe_indices.astype(np.float64), self.labels], axis=1)
        atomic_save_npy(directory / "probe_labels.npy", labels)  # columns: probe index, label
