"""Triton kernel: per-row KL(p_target || p_proxy) of two logits chunks, gradient in place.

Why: the BLISS lower-level loss adds ``gamma * KL(p_target || p_proxy)`` per token; the torch row
head builds log-softmaxes of both chunks. This kernel reads both rows once to get the two
log-normalisers and ``sum_v p_t (z_t - z_p)`` online, then (when a row scale is given) a second
time to write ``scale * (softmax(z_p) - softmax(z_t))`` over the proxy row. One program per row.

    KL_row = sum_v p_t (log p_t - log p_p) = sum_v p_t (z_t - z_p) - lse_t + lse_p

Gated like :mod:`megatron_bliss.kernels.triton_cross_entropy` (``HAS_TRITON``).
"""

from __future__ import annotations

import torch

from megatron_bliss.kernels.triton_cross_entropy import BLOCK_SIZE, HAS_TRITON, tl, triton

if HAS_TRITON:

    @triton.jit
    def _kl_rows_kernel(
        proxy_ptr,
        proxy_stride,
        target_ptr,
        target_stride,
        valid_ptr,
        scale_ptr,
        loss_ptr,
        N_COLS: tl.constexpr,
        HAS_SCALE: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        proxy_row = proxy_ptr + row * proxy_stride
        target_row = target_ptr + row * target_stride
        offsets = tl.arange(0, BLOCK)
        if tl.load(valid_ptr + row) == 0:
            tl.store(loss_ptr + row, 0.0)
            if HAS_SCALE:
                for start in range(0, N_COLS, BLOCK):
                    cols = start + offsets
                    tl.store(proxy_row + cols, tl.zeros([BLOCK], tl.float32), mask=cols < N_COLS)
            return
        max_p = -float("inf")
        sum_p = 0.0
        max_t = -float("inf")
        sum_t = 0.0
        cross = 0.0  # sum_v exp(z_t - max_t) * (z_t - z_p), rescaled as max_t grows
        for start in range(0, N_COLS, BLOCK):
            cols = start + offsets
            inside = cols < N_COLS
            z_p = tl.load(proxy_row + cols, mask=inside, other=-float("inf")).to(tl.float32)
            z_t = tl.load(target_row + cols, mask=inside, other=-float("inf")).to(tl.float32)
            new_max_p = tl.maximum(max_p, tl.max(z_p, axis=0))
            sum_p = sum_p * tl.exp(max_p - new_max_p) + tl.sum(tl.exp(z_p - new_max_p), axis=0)
            max_p = new_max_p
            new_max_t = tl.maximum(max_t, tl.max(z_t, axis=0))
            rescale = tl.exp(max_t - new_max_t)
            weights_t = tl.where(inside, tl.exp(z_t - new_max_t), 0.0)
            diff = tl.where(inside, z_t - z_p, 0.0)
            sum_t = sum_t * rescale + tl.sum(weights_t, axis=0)
            cross = cross * rescale + tl.sum(weights_t * diff, axis=0)
            max_t = new_max_t
        lse_p = max_p + tl.log(sum_p)
        lse_t = max_t + tl.log(sum_t)
        tl.store(loss_ptr + row, cross / sum_t - lse_t + lse_p)
        if HAS_SCALE:
            scale = tl.load(scale_ptr + row).to(tl.float32)
            for start in range(0, N_COLS, BLOCK):
                cols = start + offsets
                inside = cols < N_COLS
                z_p = tl.load(proxy_row + cols, mask=inside, other=0.0).to(tl.float32)
                z_t = tl.load(target_row + cols, mask=inside, other=0.0).to(tl.float32)
                grad = tl.exp(z_p - lse_p) - tl.exp(z_t - lse_t)
                tl.store(proxy_row + cols, grad * scale, mask=inside)


def triton_kl_rows(
    proxy_logits: torch.Tensor,
    target_logits: torch.Tensor,
    valid: torch.Tensor,
    row_scale: torch.Tensor | None,
) -> torch.Tensor:
    """Per-row KL(p_target || p_proxy); proxy_logits overwritten with the scaled gradient."""
    if not HAS_TRITON:
        raise RuntimeError("triton is not installed; use the torch KL path")
    if proxy_logits.stride(1) != 1 or target_logits.stride(1) != 1:
        raise ValueError("triton KL needs logits with contiguous rows")
    num_rows, num_cols = proxy_logits.shape
    losses = torch.empty(num_rows, dtype=torch.float32, device=proxy_logits.device)
    if num_rows == 0:
        return losses
    scale = row_scale.to(torch.float32).contiguous() if row_scale is not None else losses
    _kl_rows_kernel[(num_rows,)](
        proxy_logits,
        proxy_logits.stride(0),
        target_logits,
        target_logits.stride(0),
        valid.to(torch.int8).contiguous(),
        scale,
        losses,
        N_COLS=num_cols,
        HAS_SCALE=row_scale is not None,
        BLOCK=min(BLOCK_SIZE, triton.next_power_of_2(num_cols)),
        num_warps=8,
    )
    return losses
