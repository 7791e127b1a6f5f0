"""The small language models around BLISS: proxy, frozen target, their losses and warm-ups.

* The **proxy** is a small preset of the target's family and vocabulary (Pythia-shaped for Pythia
  targets, LLaMA-shaped for LLaMA). Its Hessian-vector products need attention with a double
  backward: SDPA's fused CPU/CUDA kernels have none, so the proxy uses SDPA and the bilevel step
  runs under ``sdpa_math()`` (the math backend, exact in float64 too, unlike transformers' eager
  attention whose softmax is float32).
* The **frozen target** is the current checkpoint of the model being pretrained, loaded for
  inference only: a Hugging Face directory, or a DeepSpeed checkpoint through the engine's exporter.
* ``warmup_lm`` is a plain training loop on random pool sequences: the proxy's warm-up when none is
  given, and the stand-in target of ``megatron-bliss select`` without ``--target-model``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from megatron_bliss.data.pool import SequencePool
from megatron_bliss.data.target_set import IGNORE_INDEX
from megatron_bliss.errors import ConfigError, MissingFileError
from megatron_bliss.kernels import (
    linear_cross_entropy,
    sequence_cross_entropy,
    weighted_sequence_cross_entropy,
)
from megatron_bliss.kernels.distillation import linear_cross_entropy_with_kl
from megatron_bliss.models.presets import build_model, get_preset

logger = logging.getLogger(__name__)

# Proxy presets when ``proxy_preset: auto``: the paper's pipeline (scripts/run.sh) uses a
# Pythia-160M-shaped proxy; LLaMA targets get the LLaMA-shaped tiny preset (the only small one).
AUTO_PROXY = {"pythia": "pythia-160m", "llama": "llama-tiny"}


def resolve_proxy_preset(preset: str, target_family: str) -> str:
    """``auto`` -> the family's default; an explicit preset must match the target's family."""
    if preset == "auto":
        return AUTO_PROXY[target_family]
    if get_preset(preset).family != target_family:
        raise ConfigError(
            f"proxy preset '{preset}' is {get_preset(preset).family}-shaped but the target is "
            f"{target_family}: pick a {target_family} preset"
        )
    return preset


def build_proxy(preset: str, vocab_size: int, max_positions: int) -> torch.nn.Module:
    return build_model(preset, vocab_size, max_positions, attn_implementation="sdpa")


def sdpa_math():
    """Context: SDPA's math backend (double-backward capable) for Hessian-vector products."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def lm_logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Logits for the inputs ``tokens[:, :-1]`` of pool sequences (length L + 1)."""
    return model(input_ids=tokens[:, :-1]).logits


def upcast(tensor: torch.Tensor) -> torch.Tensor:
    """Half-precision logits to float32 for losses; float32/float64 stay as they are."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


def sequence_ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean next-token cross-entropy, shape (B,)."""
    return token_ce(logits, tokens).mean(1)


def token_ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of every position from the logits, shape (B, L)."""
    vocab = logits.shape[-1]
    ce = F.cross_entropy(
        upcast(logits).reshape(-1, vocab), tokens[:, 1:].reshape(-1), reduction="none"
    )
    return ce.view(tokens.shape[0], -1)


def sequence_kl(proxy_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean over positions of KL(target || proxy), summed over the vocabulary.

    The authors' code computes this direction (forward KL, distillation-style); vocabularies padded
    to different sizes are compared on their common prefix.
    """
    vocab = min(proxy_logits.shape[-1], target_logits.shape[-1])
    log_proxy = F.log_softmax(upcast(proxy_logits[..., :vocab]), dim=-1)
    log_target = F.log_softmax(upcast(target_logits[..., :vocab]), dim=-1)
    kl = (log_target.exp() * (log_target - log_proxy)).sum(-1)
    return kl.mean(-1)


def hidden_states(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The final normed hidden states ``[B, T, H]``, before the LM head."""
    return model.base_model(input_ids=input_ids).last_hidden_state


def output_head(model: torch.nn.Module, dtype: torch.dtype):
    """``(weight, bias)`` of the LM head in ``dtype`` (for the fused losses of ``kernels``)."""
    head = model.get_output_embeddings()
    bias = head.bias.to(dtype) if head.bias is not None else None
    return head.weight.to(dtype), bias


def same_output_layer(model: torch.nn.Module, other: torch.nn.Module) -> bool:
    """Whether ``other``'s LM head has ``model``'s vocabulary and, like the fused KL needs, no bias."""
    head, other_head = model.get_output_embeddings(), other.get_output_embeddings()
    return head.weight.shape[0] == other_head.weight.shape[0] and other_head.bias is None


def sequence_losses(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each row of ``tokens`` (shape ``[B, L + 1]``).

    The LM head is fused into the loss (``kernels.sequence_cross_entropy``), so the ``[B, L, V]``
    logits of a 50k vocabulary never exist; gradients still reach every parameter (MATES probes).
    Half-precision models give float32 losses; float32/float64 keep their dtype.
    """
    hidden = hidden_states(model, tokens[:, :-1])
    weight, bias = output_head(model, hidden.dtype)
    return upcast(sequence_cross_entropy(hidden, weight, tokens[:, 1:], bias=bias))


def token_losses(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of every position, shape ``[B, L]`` (``tokens`` ``[B, L + 1]``),
    the LM head fused into the loss as in ``sequence_losses``."""
    hidden = hidden_states(model, tokens[:, :-1])
    weight, bias = output_head(model, hidden.dtype)
    batch, length, width = hidden.shape
    losses = linear_cross_entropy(
        hidden.reshape(batch * length, width), weight, tokens[:, 1:].reshape(-1), bias=bias,
        reduction="none",
    )  # fmt: skip
    return upcast(losses).view(batch, length)


def token_consistent_dots(token_dots: torch.Tensor) -> torch.Tensor:
    """``mean_t d_t / sqrt(mean_t d_t^2)`` of each row of per-token alignments ``[B, L]``: the
    cosine between a sequence's per-token contributions and a constant, in [-1, 1]."""
    rms = token_dots.pow(2).mean(1).sqrt()
    return token_dots.mean(1) / rms.clamp_min(torch.finfo(token_dots.dtype).tiny)


def weighted_lower_loss(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    weights: torch.Tensor,
    teacher: torch.nn.Module | None,
    kl_weight: float,
) -> torch.Tensor:
    """``sum_i weights_i CE_i + kl_weight * sum_i KL_i`` of pool rows, ``KL_i`` the per-token mean
    of KL(teacher || model) as in ``sequence_kl``, from one fused pass over the LM head
    (``kernels.distillation``: logits never materialised, gradients made in the forward). The
    weights get no gradient; for Hessian-vector products use ``sequence_ce`` / ``sequence_kl``."""
    if teacher is not None and kl_weight != 0 and not same_output_layer(model, teacher):
        logits = lm_logits(model, tokens)  # vocabularies padded differently: the common prefix
        with torch.no_grad():
            teacher_logits = lm_logits(teacher, tokens)
        kl = sequence_kl(logits, teacher_logits)
        return (weights.detach() * sequence_ce(logits, tokens)).sum() + kl_weight * kl.sum()
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    hidden = hidden_states(model, inputs)
    weight, bias = output_head(model, hidden.dtype)
    weights = weights.detach().to(hidden.dtype)
    if teacher is None or kl_weight == 0:
        return weighted_sequence_cross_entropy(hidden, weight, labels, weights, bias=bias)
    with torch.no_grad():
        teacher_hidden = hidden_states(teacher, inputs)
    teacher_weight, _ = output_head(teacher, teacher_hidden.dtype)
    batch, length, width = hidden.shape
    ce_weights = (weights / length).repeat_interleave(length)
    return linear_cross_entropy_with_kl(
        hidden.reshape(-1, width), weight, labels.reshape(-1), ce_weights,
        torch.full_like(ce_weights, kl_weight / length), bias=bias,
        teacher_hidden=teacher_hidden.reshape(batch * length, -1), teacher_weight=teacher_weight,
    )  # fmt: skip


def target_loss_sum(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor):
    """(sum of token losses, number of scored tokens) on a target-set batch (HF-aligned labels),
    with the LM head fused into the loss (one backward; no double backward)."""
    hidden = hidden_states(model, input_ids)[:, :-1]
    shifted = labels[:, 1:].reshape(-1)
    weight, bias = output_head(model, hidden.dtype)
    loss = linear_cross_entropy(
        hidden.reshape(-1, hidden.shape[-1]), weight, shifted, bias=bias,
        ignore_index=IGNORE_INDEX, reduction="sum",
    )  # fmt: skip
    return upcast(loss), int((shifted != IGNORE_INDEX).sum())


def pool_batch(pool: SequencePool, indices, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(pool.batch(np.asarray(indices))).to(device)


def warmup_lm(
    model: torch.nn.Module,
    pool: SequencePool,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    desc: str = "warm-up",
) -> float:
    """Plain AdamW training on random pool sequences (cosine LR), with the LM head fused into the
    loss as the engine trains; returns the sequences trained on (count them with
    ``Selector.spend``)."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(steps, 0.1))
    rng = np.random.default_rng(seed)
    loss = float("nan")
    progress = tqdm(range(steps), desc=desc, leave=False, disable=None)
    for _ in progress:
        indices = rng.choice(len(pool), size=min(batch_size, len(pool)), replace=False)
        tokens = pool_batch(pool, indices, device)
        step_loss = sequence_losses(model, tokens).mean()
        optimizer.zero_grad(set_to_none=True)
        step_loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        loss = float(step_loss.detach())
        progress.set_postfix(loss=f"{loss:.3f}")
    logger.info("%s: %d steps, final loss %.4f", desc, steps, loss)
    model.eval()
    return steps * min(batch_size, len(pool))


def cosine_with_warmup(total_steps: int, warmup_fraction: float):
    """LR multiplier: linear warm-up then cosine decay to 10% (both levels of BLISS use this)."""
    warmup = max(1, int(warmup_fraction * total_steps))

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return multiplier


def load_target_model(path: str | Path, device: torch.device) -> torch.nn.Module:
    """A frozen target: a Hugging Face directory, or a DeepSpeed checkpoint via the exporter."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path}: target model not found")
    if (path / "config.json").exists():
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa")
    else:
        from megatron_bliss.engine.export import load_model  # the engine's DeepSpeed reader

        model = load_model(path)
    return freeze(model.to(device))


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


@contextlib.contextmanager
def evaluation(model: torch.nn.Module):
    """Temporarily put ``model`` in eval mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
