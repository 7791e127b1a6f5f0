"""Cross-entropy of an LM head without materialising all the logits.

Why: ``F.cross_entropy(hidden @ weight.T, labels)`` keeps ``[N, V]`` logits (and their fp32
softmax for backward); at V = 50304 that dominates memory. :func:`linear_cross_entropy` walks
over row chunks (see :mod:`megatron_bliss.kernels.chunked`): for ``mean``/``sum`` it makes the
gradients w.r.t. hidden, weight and bias during the forward (Liger's fused linear CE) and only
scales them in backward; for ``none`` it recomputes each chunk in backward.

``fused=False`` is the plain-autograd reference, made only of differentiable torch ops, so it
supports double backward (BLISS takes Hessian-vector products through the proxy's loss).
``fused=None`` (the default) picks the fused path unless ``create_graph=True`` says the caller
will differentiate the gradient again; the fused path refuses ``create_graph=True``.

On CUDA with triton importable the per-chunk softmax gradient runs in a Triton kernel
(:mod:`megatron_bliss.kernels.triton_cross_entropy`), else in torch. bf16 inputs accumulate in
fp32 and the loss is returned in fp32 (fp64 inputs stay fp64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megatron_bliss.kernels import chunked
from megatron_bliss.kernels.triton_cross_entropy import (
    triton_cross_entropy_rows,
    triton_usable,
)


def torch_cross_entropy_rows(
    logits: torch.Tensor,
    labels: torch.Tensor,
    row_scale: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
) -> torch.Tensor:
    """Per-row CE of a logits chunk; when ``row_scale`` is given, logits become its scaled gradient.

    ``loss = -(1 - eps) log p_y - eps * mean_v log p_v`` (``F.cross_entropy``'s label smoothing),
    ``grad = scale * (softmax(z) - (1 - eps) onehot(y) - eps / V)``; ignored rows get zeros.
    """
    valid = labels != ignore_index
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels)).unsqueeze(1)
    log_probs = torch.log_softmax(logits, dim=-1)  # faster on CPU than logsumexp and a subtract
    loss = -(1.0 - label_smoothing) * log_probs.gather(1, safe_labels).squeeze(1)
    if label_smoothing:
        loss = loss - label_smoothing * log_probs.mean(dim=-1)
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if row_scale is not None:
        torch.exp(log_probs, out=logits)
        if label_smoothing:
            logits.sub_(label_smoothing / logits.shape[1])
        logits.scatter_add_(1, safe_labels, torch.full_like(loss, label_smoothing - 1.0)[:, None])
        logits.mul_(torch.where(valid, row_scale, torch.zeros_like(row_scale)).unsqueeze(1))
    return loss


class CrossEntropyHead:
    """Row head (see :mod:`chunked`) for next-token CE against ``labels`` [N]."""

    def __init__(self, labels: torch.Tensor, ignore_index: int, label_smoothing: float):
        self.labels = labels
        self.ignore_index = ignore_index
        self.label_smoothing = float(label_smoothing)

    def keeps_dtype(self, hidden: torch.Tensor) -> bool:
        """The Triton kernel reads half logits and writes half gradients (fp32 math inside)."""
        return triton_usable(hidden)

    def __call__(self, logits, start, end, row_scale):
        labels = self.labels[start:end]
        if triton_usable(logits):
            return triton_cross_entropy_rows(
                logits, labels, row_scale, self.ignore_index, self.label_smoothing
            )
        return torch_cross_entropy_rows(
            logits, labels, row_scale, self.ignore_index, self.label_smoothing
        )


def _check_inputs(hidden, weight, bias, labels, ignore_index, label_smoothing) -> None:
    chunked.check_linear_shapes(hidden, weight, bias, "linear_cross_entropy")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(
            f"linear_cross_entropy: labels must have shape [{hidden.shape[0]}], "
            f"got {tuple(labels.shape)}"
        )
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"linear_cross_entropy: labels must be int64/int32, got {labels.dtype}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing}")
    vocab = weight.shape[0]
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        raise ValueError(
            f"linear_cross_entropy: labels must lie in [0, {vocab}) or equal ignore_index "
            f"{ignore_index}; found {int(labels[bad][0])}"
        )


def reference_linear_cross_entropy(
    hidden, weight, labels, *, bias=None, ignore_index=-100, reduction="mean", label_smoothing=0.0
) -> torch.Tensor:
    """Plain-autograd CE of ``hidden @ weight.T + bias`` (fp32 logits for half inputs).

    Materialises all logits; twice differentiable.
    """
    logits = F.linear(hidden, weight, bias)
    logits = logits.to(chunked.accumulation_dtype(logits.dtype))
    return F.cross_entropy(
        logits,
        labels.long(),
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
    label_smoothing: float = 0.0,
    fused: bool | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """Cross-entropy of ``hidden [N, H] @ weight[V, H].T (+ bias)`` against ``labels [N]``.

    Args:
        reduction: ``mean`` (over non-ignored rows; NaN if none, like torch), ``sum``, ``none``
            (``[N]``, zero on ignored rows).
        chunk_size: rows per chunk (default: about 2**26 logits per chunk).
        fused: ``True`` chunked custom autograd, ``False`` plain autograd reference,
            ``None`` fused unless ``create_graph``.
        create_graph: set when the gradient itself will be differentiated (HVPs).
    """
    chunked.check_reduction(reduction)
    _check_inputs(hidden, weight, bias, labels, ignore_index, label_smoothing)
    if not chunked.resolve_fused(fused, create_graph):
        return reference_linear_cross_entropy(
            hidden,
            weight,
            labels,
            bias=bias,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
        )
    head = CrossEntropyHead(labels, ignore_index, label_smoothing)
    chunk_rows = chunked.resolve_chunk_rows(
        chunk_size, hidden.shape[0], weight.shape[0], hidden.device
    )
    if reduction == "none":
        return chunked.linear_row_losses(hidden, weight, bias, head, chunk_rows)
    acc = chunked.accumulation_dtype(hidden.dtype)
    row_weights = (labels != ignore_index).to(acc)
    if reduction == "mean":
        row_weights = row_weights / row_weights.sum()
    return chunked.linear_weighted_loss(hidden, weight, bias, row_weights, head, chunk_rows)


def _check_sequence_inputs(hidden, labels, what: str) -> None:
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(
            f"{what}: expected hidden [B, T, H] and labels [B, T], got {tuple(hidden.shape)} "
            f"and {tuple(labels.shape)}"
        )


def sequence_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    fused: bool | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """Per-sequence CE ``[B]``: mean over each sequence's non-ignored tokens (0 if it has none).

    Used for scoring and for the weighted CE ``sum_i P_i CE_i`` of BLISS (when the weights are
    known before the backward, :func:`weighted_sequence_cross_entropy` is cheaper).
    """
    _check_sequence_inputs(hidden, labels, "sequence_cross_entropy")
    batch, length, width = hidden.shape
    token_losses = linear_cross_entropy(
        hidden.reshape(batch * length, width),
        weight,
        labels.reshape(-1),
        bias=bias,
        ignore_index=ignore_index,
        reduction="none",
        chunk_size=chunk_size,
        fused=fused,
        create_graph=create_graph,
    ).view(batch, length)
    counts = (labels != ignore_index).sum(dim=1).clamp(min=1)
    return token_losses.sum(dim=1) / counts.to(token_losses.dtype)


def weighted_sequence_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    sequence_weights: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    fused: bool | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """``sum_b sequence_weights[b] * CE_b`` with CE_b as in :func:`sequence_cross_entropy`.

    The fused path makes all gradients during the forward (one pass, no recompute); gradients also
    flow into ``sequence_weights`` (``d/dP_b = CE_b``) when it requires grad.
    """
    _check_sequence_inputs(hidden, labels, "weighted_sequence_cross_entropy")
    if sequence_weights.shape != hidden.shape[:1]:
        raise ValueError(
            f"weighted_sequence_cross_entropy: sequence_weights must have shape "
            f"[{hidden.shape[0]}], got {tuple(sequence_weights.shape)}"
        )
    if not chunked.resolve_fused(fused, create_graph):
        per_sequence = sequence_cross_entropy(
            hidden, weight, labels, bias=bias, ignore_index=ignore_index, fused=False
        )
        return (sequence_weights.to(per_sequence.dtype) * per_sequence).sum()
    batch, length, width = hidden.shape
    flat_labels = labels.reshape(-1)
    _check_inputs(hidden.reshape(-1, width), weight, bias, flat_labels, ignore_index, 0.0)
    acc = chunked.accumulation_dtype(hidden.dtype)
    valid = (labels != ignore_index).to(acc)
    per_token = sequence_weights.to(acc).unsqueeze(1) / valid.sum(dim=1, keepdim=True).clamp(min=1)
    row_weights = (per_token * valid).reshape(-1)
    head = CrossEntropyHead(flat_labels, ignore_index, 0.0)
    chunk_rows = chunked.resolve_chunk_rows(
        chunk_size, batch * length, weight.shape[0], hidden.device
    )
    return chunked.linear_weighted_loss(
        hidden.reshape(-1, width), weight, bias, row_weights, head, chunk_rows
    )
