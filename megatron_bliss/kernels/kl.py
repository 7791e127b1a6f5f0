"""Token-level KL(p_target || p_proxy) with bounded memory.

Why: BLISS's lower-level loss adds ``gamma * KL`` between a frozen target LLM's and the proxy's
next-token distributions (method-spec 1.2: ``F.kl_div(log_softmax(proxy), softmax(target))``,
i.e. KL(p_target || p_proxy) per token, summed over vocab, averaged over valid positions).
Doing that with full ``[B, T, V]`` fp32 log-softmaxes costs several copies of the logits.

- :func:`token_kl_divergence` takes both logits and processes row chunks: the forward keeps only
  per-row losses, the backward recomputes each chunk's ``softmax(proxy) - softmax(target)``.
- :func:`linear_token_kl_divergence` takes the proxy's hidden states and LM-head weight (and the
  target's logits, or its hidden states and weight) and never materialises the proxy logits: it
  uses the chunked linear engine of :mod:`megatron_bliss.kernels.chunked`.

The target side is treated as frozen: the chunked paths give it no gradient. ``fused=False``
selects the plain-autograd reference (double-backward capable; gradients reach every input).
On CUDA with triton the per-chunk work runs in :mod:`megatron_bliss.kernels.triton_kl`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from megatron_bliss.kernels import chunked
from megatron_bliss.kernels.triton_cross_entropy import triton_usable
from megatron_bliss.kernels.triton_kl import triton_kl_rows


def torch_kl_rows(
    proxy_logits: torch.Tensor,
    target_logits: torch.Tensor,
    valid: torch.Tensor,
    row_scale: torch.Tensor | None,
) -> torch.Tensor:
    """Per-row KL(p_t || p_p) of a chunk; proxy_logits become ``scale * (p_p - p_t)`` if scaled.

    ``proxy_logits`` is a scratch chunk (overwritten with log p_proxy, then the gradient); only
    two more chunk-sized buffers are made (log p_target, p_target).
    """
    log_p_target = torch.log_softmax(target_logits, dim=-1)
    p_target = log_p_target.exp()
    log_p_proxy = proxy_logits.copy_(torch.log_softmax(proxy_logits, dim=-1))
    loss = torch.einsum("ij,ij->i", p_target, log_p_target.sub_(log_p_proxy))
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if row_scale is not None:
        scale = torch.where(valid, row_scale, torch.zeros_like(row_scale)).unsqueeze(1)
        log_p_proxy.exp_().sub_(p_target).mul_(scale)
    return loss


def kl_rows(proxy_logits, target_logits, valid, row_scale) -> torch.Tensor:
    """Dispatch one chunk to the Triton kernel (CUDA) or the torch row function (fp32 losses)."""
    if triton_usable(proxy_logits) and triton_usable(target_logits):
        return triton_kl_rows(proxy_logits, target_logits.contiguous(), valid, row_scale)
    acc = chunked.accumulation_dtype(proxy_logits.dtype)
    if proxy_logits.dtype != acc:  # half logits handed to a torch path: compute in fp32
        chunk = proxy_logits.to(acc)
        losses = torch_kl_rows(chunk, target_logits.to(acc), valid, row_scale)
        if row_scale is not None:
            proxy_logits.copy_(chunk)
        return losses
    return torch_kl_rows(proxy_logits, target_logits.to(acc), valid, row_scale)


class KLHead:
    """Row head (see :mod:`chunked`): KL against target logits, given or made chunk by chunk."""

    def __init__(
        self, valid, target_logits=None, target_hidden=None, target_weight=None, target_bias=None
    ):
        self.valid = valid
        self.target_logits = target_logits
        self.target_hidden = target_hidden
        self.target_weight = target_weight
        self.target_bias = target_bias

    def keeps_dtype(self, hidden: torch.Tensor) -> bool:
        """The Triton kernel reads half logits and writes half gradients (fp32 math inside)."""
        return triton_usable(hidden)

    def target_chunk(self, start: int, end: int) -> torch.Tensor:
        """Target logits of rows start:end in their own dtype, without gradient."""
        if self.target_logits is not None:
            return self.target_logits[start:end].detach()
        with torch.no_grad():
            weight = self.target_weight.detach()
            return chunked.chunk_logits(
                self.target_hidden[start:end].detach(),
                weight,
                None if self.target_bias is None else self.target_bias.detach(),
                weight.dtype,
            )

    def __call__(self, logits, start, end, row_scale):
        return kl_rows(logits, self.target_chunk(start, end), self.valid[start:end], row_scale)


class ChunkedLogitsKL(torch.autograd.Function):
    """Per-row KL of given proxy logits; backward recomputes the softmaxes chunk by chunk."""

    @staticmethod
    def forward(ctx, proxy_logits, target_logits, valid, chunk_rows):
        ctx.save_for_backward(proxy_logits, target_logits, valid)
        ctx.chunk_rows = chunk_rows
        return _logits_kl_pass(proxy_logits, target_logits, valid, chunk_rows, None)[0]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_rows):
        proxy_logits, target_logits, valid = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        _, grad = _logits_kl_pass(proxy_logits, target_logits, valid, ctx.chunk_rows, grad_rows)
        return grad, None, None, None


def _logits_kl_pass(proxy_logits, target_logits, valid, chunk_rows, row_scale):
    acc = chunked.accumulation_dtype(proxy_logits.dtype)
    num_rows = proxy_logits.shape[0]
    losses = torch.empty(num_rows, dtype=acc, device=proxy_logits.device)
    grad = torch.empty_like(proxy_logits) if row_scale is not None else None
    for start in range(0, num_rows, chunk_rows):
        end = min(num_rows, start + chunk_rows)
        chunk = proxy_logits[start:end].to(acc, copy=True)
        scale = None if row_scale is None else row_scale[start:end].to(acc)
        target = target_logits[start:end].to(acc)
        losses[start:end] = kl_rows(chunk, target, valid[start:end], scale)
        if grad is not None:
            grad[start:end] = chunk
    return losses, grad


def _flat_mask(mask, leading_shape, device, what: str) -> torch.Tensor:
    if mask is None:
        return torch.ones(leading_shape, dtype=torch.bool, device=device).reshape(-1)
    if tuple(mask.shape) != tuple(leading_shape):
        raise ValueError(
            f"{what}: mask must have shape {tuple(leading_shape)}, got {tuple(mask.shape)}"
        )
    return mask.reshape(-1).to(device=device, dtype=torch.bool)


def _reduce(rows, valid, reduction, leading_shape):
    if reduction == "none":
        return rows.view(leading_shape)
    total = rows.sum()
    return total / valid.sum() if reduction == "mean" else total


def reference_token_kl_divergence(proxy_logits, target_logits, mask=None, *, reduction="mean"):
    """Plain-autograd KL(p_target || p_proxy) via ``F.kl_div``; twice differentiable."""
    acc = chunked.accumulation_dtype(proxy_logits.dtype)
    leading = proxy_logits.shape[:-1]
    valid = _flat_mask(mask, leading, proxy_logits.device, "token_kl_divergence")
    per_token = F.kl_div(
        torch.log_softmax(proxy_logits.to(acc), dim=-1),
        torch.softmax(target_logits.to(acc), dim=-1),
        reduction="none",
    ).sum(dim=-1)
    rows = torch.where(valid, per_token.reshape(-1), torch.zeros_like(per_token.reshape(-1)))
    return _reduce(rows, valid, reduction, leading)


def token_kl_divergence(
    proxy_logits: torch.Tensor,
    target_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    reduction: str = "mean",
    chunk_size: int | None = None,
    fused: bool | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """KL(p_target || p_proxy) per token (summed over vocab) from logits ``[..., V]``.

    Args:
        mask: ``[...]`` bool/0-1, True where the position counts (default: all).
        reduction: ``mean`` over valid positions, ``sum``, or ``none`` (``[...]``, 0 if masked).
        fused: ``True`` chunked (target gets no gradient), ``False`` plain reference,
            ``None`` chunked unless ``create_graph``.
    """
    chunked.check_reduction(reduction)
    if proxy_logits.shape != target_logits.shape:
        raise ValueError(
            f"token_kl_divergence: proxy and target logits differ in shape: "
            f"{tuple(proxy_logits.shape)} vs {tuple(target_logits.shape)}"
        )
    if not chunked.resolve_fused(fused, create_graph):
        return reference_token_kl_divergence(proxy_logits, target_logits, mask, reduction=reduction)
    leading, vocab = proxy_logits.shape[:-1], proxy_logits.shape[-1]
    valid = _flat_mask(mask, leading, proxy_logits.device, "token_kl_divergence")
    proxy = proxy_logits.reshape(-1, vocab)
    target = target_logits.detach().reshape(-1, vocab)
    chunk_rows = chunked.resolve_chunk_rows(chunk_size, proxy.shape[0], vocab, proxy.device)
    if torch.is_grad_enabled() and proxy.requires_grad:
        rows = ChunkedLogitsKL.apply(proxy, target, valid, chunk_rows)
    else:
        rows = _logits_kl_pass(proxy, target, valid, chunk_rows, None)[0]
    return _reduce(rows, valid, reduction, leading)


def linear_token_kl_divergence(
    proxy_hidden: torch.Tensor,
    proxy_weight: torch.Tensor,
    target_logits: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    *,
    target_hidden: torch.Tensor | None = None,
    target_weight: torch.Tensor | None = None,
    proxy_bias: torch.Tensor | None = None,
    target_bias: torch.Tensor | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
    fused: bool | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """KL(p_target || p_proxy) with proxy logits ``proxy_hidden [..., H] @ proxy_weight.T``.

    The target is either ``target_logits [..., V]`` or ``target_hidden [..., H_t]`` with
    ``target_weight [V, H_t]`` (its logits are then made one chunk at a time too). Gradients go
    to the proxy hidden/weight/bias only. ``mask``/``reduction``/``fused`` as in
    :func:`token_kl_divergence`.
    """
    chunked.check_reduction(reduction)
    leading, width = proxy_hidden.shape[:-1], proxy_hidden.shape[-1]
    hidden = proxy_hidden.reshape(-1, width)
    chunked.check_linear_shapes(hidden, proxy_weight, proxy_bias, "linear_token_kl_divergence")
    head = _make_kl_head(
        hidden,
        proxy_weight,
        leading,
        mask,
        target_logits,
        target_hidden,
        target_weight,
        target_bias,
    )
    if not chunked.resolve_fused(fused, create_graph):
        proxy_logits = F.linear(proxy_hidden, proxy_weight, proxy_bias)
        target = head.target_logits
        if target is None:
            target = F.linear(target_hidden, target_weight, target_bias).reshape(
                -1, proxy_weight.shape[0]
            )
        return reference_token_kl_divergence(
            proxy_logits, target.reshape(proxy_logits.shape), mask, reduction=reduction
        )
    chunk_rows = chunked.resolve_chunk_rows(
        chunk_size, hidden.shape[0], proxy_weight.shape[0], hidden.device
    )
    if reduction == "none":
        rows = chunked.linear_row_losses(hidden, proxy_weight, proxy_bias, head, chunk_rows)
        return rows.view(leading)
    acc = chunked.accumulation_dtype(hidden.dtype)
    row_weights = head.valid.to(acc)
    if reduction == "mean":
        row_weights = row_weights / row_weights.sum()
    return chunked.linear_weighted_loss(
        hidden, proxy_weight, proxy_bias, row_weights, head, chunk_rows
    )


def _make_kl_head(
    hidden, proxy_weight, leading, mask, target_logits, target_hidden, target_weight, target_bias
):
    what = "linear_token_kl_divergence"
    vocab = proxy_weight.shape[0]
    valid = _flat_mask(mask, leading, hidden.device, what)
    if target_logits is not None:
        if tuple(target_logits.shape) != (*leading, vocab):
            raise ValueError(
                f"{what}: target_logits must have shape {(*leading, vocab)}, "
                f"got {tuple(target_logits.shape)}"
            )
        return KLHead(valid, target_logits=target_logits.reshape(-1, vocab))
    if target_hidden is None or target_weight is None:
        raise ValueError(f"{what}: give target_logits, or target_hidden and target_weight")
    flat_target = target_hidden.reshape(-1, target_hidden.shape[-1])
    chunked.check_linear_shapes(flat_target, target_weight, target_bias, what)
    if flat_target.shape[0] != hidden.shape[0] or target_weight.shape[0] != vocab:
        raise ValueError(
            f"{what}: target hidden/weight {tuple(target_hidden.shape)}/{tuple(target_weight.shape)} "
            f"do not match proxy rows {hidden.shape[0]} and vocab {vocab}"
        )
    return KLHead(
        valid, target_hidden=flat_target, target_weight=target_weight, target_bias=target_bias
    )
