"""Which global samples a rank reads, and how samples become model inputs.

Data position = global consumed samples. Optimizer step ``s`` consumes the ``global_batch``
samples ``[consumed, consumed + global_batch)``; within them, micro-step ``j`` of rank ``r`` reads
the ``micro`` consecutive samples starting at ``consumed + (j * world + r) * micro``. The samples of
one optimizer step are therefore the same for every world size and accumulation, so resuming,
even on another number of ranks, neither replays nor skips data.

Megatron's ``eod_mask_loss``, ``reset_position_ids`` and ``reset_attention_mask`` are realised with
Hugging Face models as follows: the loss mask zeroes the positions whose *input* token is the
end-of-document id (Megatron's rule); position ids restart at 0 after each end-of-document token
and are passed as ``position_ids``; the attention reset is a 4-D additive block-diagonal causal
mask ``(batch, 1, seq, seq)`` (0 where allowed, dtype-min elsewhere), which transformers passes to
SDPA/eager attention unchanged. flash-attention 2 takes no 4-D mask: there the reset is realised by
packing (transformers derives document boundaries from restarting ``position_ids``), so it needs
``reset_position_ids`` as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from megatron_bliss.errors import ConfigError


def micro_batch_indices(
    consumed: int, micro_step: int, rank: int, world_size: int, micro_batch: int
) -> range:
    """Global sample indices of one micro-batch (see the module docstring)."""
    start = consumed + (micro_step * world_size + rank) * micro_batch
    return range(start, start + micro_batch)


@dataclass
class BatchOptions:
    eod_token_id: int | None = None
    eod_mask_loss: bool = False
    reset_position_ids: bool = False
    reset_attention_mask: bool = False
    flash_attention: bool = False


def _document_positions(inputs: torch.Tensor, eod: int) -> torch.Tensor:
    """Position of each token within its document (restarting after every eod token)."""
    batch, length = inputs.shape
    index = torch.arange(length).expand(batch, length)
    after_eod = torch.zeros_like(inputs, dtype=torch.bool)
    after_eod[:, 1:] = inputs[:, :-1] == eod
    starts = torch.where(after_eod, index, torch.zeros_like(index))
    starts = torch.cummax(starts, dim=1).values
    return index - starts


def _document_mask(inputs: torch.Tensor, eod: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive 4-D causal mask that also blocks attention across end-of-document tokens."""
    length = inputs.shape[1]
    after_eod = torch.zeros_like(inputs, dtype=torch.long)
    after_eod[:, 1:] = (inputs[:, :-1] == eod).long()
    document = torch.cumsum(after_eod, dim=1)
    same_document = document[:, :, None] == document[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = (same_document & causal)[:, None]
    mask = torch.zeros(allowed.shape, dtype=dtype)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


def make_batch(
    samples: np.ndarray, options: BatchOptions, device: torch.device, mask_dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """``(micro, seq+1)`` int64 samples -> model kwargs plus ``labels`` and ``loss_mask``."""
    tokens = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.int64))
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    batch: dict[str, torch.Tensor] = {"input_ids": inputs, "labels": labels}
    needs_eod = options.eod_mask_loss or options.reset_position_ids or options.reset_attention_mask
    if needs_eod and options.eod_token_id is None:
        raise ConfigError("eod_mask_loss/reset_* need data.eod_token_id or a tokenizer with eos")
    loss_mask = torch.ones(labels.shape, dtype=torch.float32)
    if options.eod_mask_loss:
        loss_mask[inputs == options.eod_token_id] = 0.0
    batch["loss_mask"] = loss_mask
    if options.reset_position_ids:
        batch["position_ids"] = _document_positions(inputs, options.eod_token_id)
    if options.reset_attention_mask and not options.flash_attention:
        batch["attention_mask"] = _document_mask(inputs, options.eod_token_id, mask_dtype)
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor):
    """Mean next-token cross entropy over unmasked positions (fp32 for stability)."""
    losses = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none"
    )
    mask = loss_mask.reshape(-1)
    return (losses * mask).sum() / mask.sum().clamp(min=1.0)
