"""The chunked "linear layer + row loss" engine shared by cross-entropy and KL.

Why: an LM head turns ``hidden [N, H]`` into ``logits [N, V]``; with V = 50304 and N = 16k rows
the fp32 logits (and their gradient) are gigabytes. The engine walks over row chunks, builds one
chunk of logits at a time, lets a *head* turn that chunk into per-row losses and (in place) into
the gradient of the loss w.r.t. the logits, and immediately folds that gradient back into
``grad_hidden`` / ``grad_weight`` / ``grad_bias``. Only one chunk of logits ever exists.

A head is any callable ``head(logits, start, end, row_scale) -> loss_rows``:
``logits`` is a fresh ``[n, V]`` chunk for rows ``start:end``, in the accumulation dtype (fp32
for bf16 inputs) unless the head's optional ``keeps_dtype(hidden)`` says it works on half
logits directly (the Triton kernels do: they upcast in registers, as Liger does); when
``row_scale`` (``[n]``) is given, the head must overwrite ``logits`` with
``row_scale[:, None] * d loss_row / d logits``. Heads must give zero loss and zero gradient to
rows they consider invalid (ignored labels, masked positions). The chunk is scratch space: a head
may overwrite it even without a row scale.

Two autograd Functions use it:

- :class:`FusedLinearLoss` returns ``sum_i w_i * loss_i`` for fixed row weights ``w`` and computes
  every gradient *during the forward* (the Liger "fused linear cross-entropy" trick); backward
  only scales them by the incoming scalar. One pass of two matmuls per chunk plus the logits one.
- :class:`ChunkedLinearRowLoss` returns the per-row losses (``reduction="none"``); backward
  recomputes each chunk's logits with the incoming per-row gradient as the row scale.

Neither supports double backward (their backward is ``once_differentiable``); the callers keep a
plain-autograd path for Hessian-vector products.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.autograd.function import once_differentiable

RowHead = Callable[[torch.Tensor, int, int, torch.Tensor | None], torch.Tensor]

# Elements of one fp32 logits chunk: 2**26 floats = 256 MiB (1334 rows at V = 50304) on GPUs.
# On CPUs a chunk that stays in cache is what pays: 2**21 floats (8 MiB, 512 rows at V = 4096)
# made a 2048 x 4096 cross-entropy forward 2.5x faster than one whole-batch chunk (2 cores).
DEFAULT_CHUNK_ELEMENTS = 2**26
CPU_CHUNK_ELEMENTS = 2**21
REDUCTIONS = ("mean", "sum", "none")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half types (bf16 inputs accumulate in fp32), the dtype itself for fp32/fp64."""
    return torch.promote_types(dtype, torch.float32)


def default_chunk_rows(num_rows: int, vocab_size: int, device: torch.device | None = None) -> int:
    """Rows per chunk so that one fp32 logits chunk holds about DEFAULT_CHUNK_ELEMENTS values
    (CPU_CHUNK_ELEMENTS on a CPU)."""
    cpu = device is not None and torch.device(device).type == "cpu"
    elements = CPU_CHUNK_ELEMENTS if cpu else DEFAULT_CHUNK_ELEMENTS
    return max(1, min(max(num_rows, 1), elements // max(vocab_size, 1)))


def resolve_chunk_rows(
    chunk_size: int | None, num_rows: int, vocab_size: int, device: torch.device | None = None
) -> int:
    if chunk_size is None:
        return default_chunk_rows(num_rows, vocab_size, device)
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}")
    return int(chunk_size)


def resolve_fused(fused: bool | None, create_graph: bool) -> bool:
    """``fused=None`` means fused unless the caller needs a differentiable graph (double backward)."""
    if fused is None:
        return not create_graph
    if fused and create_graph:
        raise ValueError(
            "fused=True has no double backward; pass fused=False (or leave fused=None) "
            "when create_graph=True"
        )
    return bool(fused)


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_linear_shapes(hidden: torch.Tensor, weight: torch.Tensor, bias, what: str) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"{what}: expected hidden [N, H] and weight [V, H], got {tuple(hidden.shape)} "
            f"and {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(
            f"{what}: bias must have shape [{weight.shape[0]}], got {tuple(bias.shape)}"
        )


def chunk_logits(hidden_chunk, weight, bias, acc_dtype) -> torch.Tensor:
    """One chunk of logits in ``acc_dtype`` (a fresh tensor the head may overwrite)."""
    logits = hidden_chunk @ weight.T
    if bias is not None:
        logits = logits + bias
    return logits.to(acc_dtype) if logits.dtype != acc_dtype else logits


_MIXED_ADDMM_WORKS: dict[str, bool] = {}


def accumulate_matmul(out: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
    """``out += left @ right`` with ``out`` possibly wider (fp32) than the half inputs.

    On CUDA, ``addmm(..., out_dtype=fp32)`` accumulates straight into the fp32 buffer; elsewhere
    (or on torch builds without it) the half product is made first and then added.
    """
    if out.dtype == left.dtype:
        out.addmm_(left, right)
        return
    key = out.device.type
    if _MIXED_ADDMM_WORKS.get(key, out.is_cuda):
        try:
            torch.addmm(out, left, right, out_dtype=out.dtype, out=out)
            _MIXED_ADDMM_WORKS[key] = True
            return
        except (RuntimeError, TypeError, NotImplementedError):
            _MIXED_ADDMM_WORKS[key] = False
    out += (left @ right).to(out.dtype)


def linear_pass(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    head: RowHead,
    chunk_rows: int,
    row_scale: torch.Tensor | None = None,
    need_grads: tuple[bool, bool, bool] = (False, False, False),
):
    """Per-row losses and, when ``row_scale`` is given, the scaled gradients, chunk by chunk.

    Returns ``(loss_rows, grad_hidden, grad_weight, grad_bias)``; the gradients are ``None`` where
    not requested. ``grad_weight``/``grad_bias`` are accumulated in the accumulation dtype.
    """
    acc = accumulation_dtype(hidden.dtype)
    num_rows = hidden.shape[0]
    losses = torch.empty(num_rows, dtype=acc, device=hidden.device)
    want_h, want_w, want_b = (flag and row_scale is not None for flag in need_grads)
    grad_hidden = torch.empty_like(hidden) if want_h else None
    grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
    grad_bias = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if want_b else None
    keeps_dtype = getattr(head, "keeps_dtype", None)
    logits_dtype = hidden.dtype if keeps_dtype and keeps_dtype(hidden) else acc
    for start in range(0, num_rows, chunk_rows):
        end = min(num_rows, start + chunk_rows)
        hidden_chunk = hidden[start:end]
        logits = chunk_logits(hidden_chunk, weight, bias, logits_dtype)
        scale = None if row_scale is None else row_scale[start:end].to(acc)
        losses[start:end] = head(logits, start, end, scale)
        if scale is None:
            continue
        grad_logits = logits.to(weight.dtype)
        if grad_hidden is not None:
            grad_hidden[start:end] = grad_logits @ weight
        if grad_weight is not None:
            accumulate_matmul(grad_weight, grad_logits.T, hidden_chunk)
        if grad_bias is not None:
            grad_bias += logits.sum(0, dtype=acc)
    return losses, grad_hidden, grad_weight, grad_bias


def _cast(grad, like):
    return None if grad is None else grad.to(like.dtype)


class FusedLinearLoss(torch.autograd.Function):
    """``sum_i row_weights_i * loss_i(hidden_i @ weight.T + bias)`` with gradients made in forward.

    ``row_weights`` may require grad (e.g. softmax data weights P_i): its gradient is
    ``grad_out * loss_i``, from the row losses kept from the forward.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, row_weights, head, chunk_rows):
        need = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            bias is not None and ctx.needs_input_grad[2],
        )
        acc = accumulation_dtype(hidden.dtype)
        scale = row_weights.detach().to(acc)
        losses, grad_h, grad_w, grad_b = linear_pass(
            hidden, weight, bias, head, chunk_rows, row_scale=scale, need_grads=need
        )
        ctx.save_for_backward(losses if ctx.needs_input_grad[3] else None)
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.like = (hidden, weight, bias)
        ctx.row_weights_dtype = row_weights.dtype
        return (losses * scale).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        if ctx.grads is None:
            raise RuntimeError(
                "the fused linear loss can be backpropagated once (its gradients are made in "
                "forward and scaled in place); recompute the loss to backpropagate again"
            )
        (losses,) = ctx.saved_tensors
        grads = []
        for grad, like in zip(ctx.grads, ctx.like):
            grads.append(None if grad is None else _cast(grad.mul_(grad_out.to(grad.dtype)), like))
        ctx.grads = None
        grad_weights = None
        if losses is not None:
            grad_weights = (losses * grad_out.to(losses.dtype)).to(ctx.row_weights_dtype)
        return grads[0], grads[1], grads[2], grad_weights, None, None


class ChunkedLinearRowLoss(torch.autograd.Function):
    """Per-row losses of ``hidden @ weight.T + bias``; backward recomputes logits chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, head, chunk_rows):
        losses, _, _, _ = linear_pass(hidden, weight, bias, head, chunk_rows)
        ctx.save_for_backward(hidden, weight, bias)
        ctx.head = head
        ctx.chunk_rows = chunk_rows
        return losses

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_rows):
        hidden, weight, bias = ctx.saved_tensors
        need = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            bias is not None and ctx.needs_input_grad[2],
        )
        _, grad_h, grad_w, grad_b = linear_pass(
            hidden, weight, bias, ctx.head, ctx.chunk_rows, row_scale=grad_rows, need_grads=need
        )
        return grad_h, _cast(grad_w, weight), _cast(grad_b, bias), None, None


def linear_row_losses(hidden, weight, bias, head, chunk_rows) -> torch.Tensor:
    """Per-row losses through :class:`ChunkedLinearRowLoss`, or a plain chunked pass without grad."""
    if not _wants_grad(hidden, weight, bias):
        return linear_pass(hidden, weight, bias, head, chunk_rows)[0]
    return ChunkedLinearRowLoss.apply(hidden, weight, bias, head, chunk_rows)


def linear_weighted_loss(hidden, weight, bias, row_weights, head, chunk_rows) -> torch.Tensor:
    """``sum_i w_i loss_i`` through :class:`FusedLinearLoss`, or a plain chunked pass without grad."""
    if not _wants_grad(hidden, weight, bias, row_weights):
        losses = linear_pass(hidden, weight, bias, head, chunk_rows)[0]
        return (losses * row_weights.to(losses.dtype)).sum()
    return FusedLinearLoss.apply(hidden, weight, bias, row_weights, head, chunk_rows)


def _wants_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
