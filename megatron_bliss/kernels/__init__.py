"""Loss kernels on plain tensors: chunked linear + cross-entropy and token-level KL.

Nothing here knows about training or selection. Every loss has a fused/chunked path (bounded
memory; Triton on CUDA when available) and a plain-autograd reference path (``fused=False``)
that supports double backward.
"""

from megatron_bliss.kernels.cross_entropy import (
    linear_cross_entropy,
    reference_linear_cross_entropy,
    sequence_cross_entropy,
    weighted_sequence_cross_entropy,
)
from megatron_bliss.kernels.kl import (
    linear_token_kl_divergence,
    reference_token_kl_divergence,
    token_kl_divergence,
)
from megatron_bliss.kernels.triton_cross_entropy import HAS_TRITON

__all__ = [
    "HAS_TRITON",
    "linear_cross_entropy",
    "linear_token_kl_divergence",
    "reference_linear_cross_entropy",
    "reference_token_kl_divergence",
    "sequence_cross_entropy",
    "token_kl_divergence",
    "weighted_sequence_cross_entropy",
]
