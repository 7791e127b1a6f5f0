"""Triton kernel: per-row cross-entropy of a logits chunk, gradient written in place.

Why: the torch row head (:func:`megatron_bliss.kernels.cross_entropy.torch_cross_entropy_rows`)
makes several chunk-sized temporaries (logsumexp, exp, scatter). This kernel reads each row twice
(an online max/sum pass, then a gradient pass) and writes ``scale * (softmax - smoothed one-hot)``
over the row itself, as Liger-Kernel does. One program handles one row; rows are independent. The vocabulary size is a compile-time
constant (one compilation per vocabulary; it also keeps triton's interpreter happy).

Import is gated: without triton, ``HAS_TRITON`` is False and the torch path is used. The kernel
runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (tests only).
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    HAS_TRITON = False

BLOCK_SIZE = 4096
DISABLE_ENV = "MEGATRON_BLISS_DISABLE_TRITON"


KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def triton_usable(tensor: torch.Tensor) -> bool:
    """True when the Triton kernels should run on ``tensor`` (CUDA, triton importable, not disabled).

    fp64 stays on the torch path (the kernels compute in fp32).
    """
    if not HAS_TRITON or os.environ.get(DISABLE_ENV, "0") == "1":
        return False
    if tensor.dtype not in KERNEL_DTYPES:
        return False
    return tensor.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1"


if HAS_TRITON:

    @triton.jit
    def _cross_entropy_rows_kernel(
        logits_ptr,
        logits_stride,
        labels_ptr,
        scale_ptr,
        loss_ptr,
        ignore_index,
        smoothing,
        N_COLS: tl.constexpr,
        HAS_SCALE: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        row_ptr = logits_ptr + row * logits_stride
        label = tl.load(labels_ptr + row)
        offsets = tl.arange(0, BLOCK)
        if label == ignore_index:
            tl.store(loss_ptr + row, 0.0)
            if HAS_SCALE:
                for start in range(0, N_COLS, BLOCK):
                    cols = start + offsets
                    tl.store(row_ptr + cols, tl.zeros([BLOCK], tl.float32), mask=cols < N_COLS)
            return
        # Pass 1: online max and sum of exp, plus the plain sum for label smoothing.
        running_max = -float("inf")
        running_sum = 0.0
        logits_sum = 0.0
        for start in range(0, N_COLS, BLOCK):
            cols = start + offsets
            z = tl.load(row_ptr + cols, mask=cols < N_COLS, other=-float("inf")).to(tl.float32)
            new_max = tl.maximum(running_max, tl.max(z, axis=0))
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(
                tl.exp(z - new_max), axis=0
            )
            running_max = new_max
            logits_sum += tl.sum(tl.where(cols < N_COLS, z, 0.0), axis=0)
        lse = running_max + tl.log(running_sum)
        z_label = tl.load(row_ptr + label).to(tl.float32)
        loss = lse - (1.0 - smoothing) * z_label - smoothing * logits_sum / N_COLS
        tl.store(loss_ptr + row, loss)
        if HAS_SCALE:
            # Pass 2: d loss / d z = softmax(z) - (1 - eps) * onehot(label) - eps / V, scaled.
            scale = tl.load(scale_ptr + row).to(tl.float32)
            for start in range(0, N_COLS, BLOCK):
                cols = start + offsets
                z = tl.load(row_ptr + cols, mask=cols < N_COLS, other=0.0).to(tl.float32)
                grad = tl.exp(z - lse) - smoothing / N_COLS
                grad = tl.where(cols == label, grad - (1.0 - smoothing), grad)
                tl.store(row_ptr + cols, grad * scale, mask=cols < N_COLS)


def triton_cross_entropy_rows(
    logits: torch.Tensor,
    labels: torch.Tensor,
    row_scale: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
) -> torch.Tensor:
    """Same contract as the torch row head: per-row fp32 loss; logits (fp32 or half) are
    overwritten with the scaled gradient when row_scale is given."""
    if not HAS_TRITON:
        raise RuntimeError("triton is not installed; use the torch cross-entropy path")
    if logits.stride(1) != 1:
        raise ValueError("triton cross-entropy needs logits with contiguous rows")
    num_rows, num_cols = logits.shape
    losses = torch.empty(num_rows, dtype=torch.float32, device=logits.device)
    if num_rows == 0:
        return losses
    scale = row_scale.to(torch.float32).contiguous() if row_scale is not None else losses
    _cross_entropy_rows_kernel[(num_rows,)](
        logits,
        logits.stride(0),
        labels.contiguous(),
        scale,
        losses,
        ignore_index,
        float(label_smoothing),
        N_COLS=num_cols,
        HAS_SCALE=row_scale is not None,
        BLOCK=min(BLOCK_SIZE, triton.next_power_of_2(num_cols)),
        num_warps=8,
    )
    return losses
