"""One FLOPs model for every forward, backward and selector pass in the project.

Per token, a forward pass of a decoder costs ``2 * M + 4 * L * d * T`` (PaLM appendix B; nanoGPT's
``estimate_mfu``): ``M`` parameters take part in matrix multiplies (all but the input embedding,
which is a lookup; the LM head only when the pass computes logits), and attention adds ``2 * d *
T`` per layer for the scores and ``2 * d * T`` for the weighted values (L layers, width d,
sequence length T). Other passes are counted in forward equivalents (``PASSES``): a backward pass
costs two forwards, a forward-mode JVP carries one tangent matmul per primal matmul plus the
tangent of the weights' own change, and so on. The engine's MFU, every selector's
``flops`` and ``megatron-bliss compare`` all use these numbers, so equal work reports equal FLOPs.
"""

from __future__ import annotations

from megatron_bliss.models.presets import count_parameters

# Cost of a pass in forward equivalents.
PASSES = {
    "forward": 1.0,
    "train": 3.0,  # forward + backward (the backward pass is two forward matmuls per weight)
    "jvp": 3.0,  # primal + tangent: y = W x gives dy = dW x + W dx
    "fd": 2.0,  # a central finite difference: two forwards
    "graph": 3.0,  # forward + a backward that keeps its graph (create_graph=True)
    "vjp_of_graph": 4.0,  # a vector-Jacobian product through that graph: Hessian-vector product
}


def matmul_parameters(config, lm_head: bool = True) -> int:
    """Parameters in matrix multiplies: everything but the input embedding (and the LM head when
    ``lm_head`` is False, as for a score model's backbone)."""
    inner = count_parameters(config, include_embeddings=False)
    return inner + (config.vocab_size * config.hidden_size if lm_head else 0)


def forward_flops_per_token(config, seq_length: int, lm_head: bool = True) -> float:
    attention = 4.0 * config.num_hidden_layers * config.hidden_size * seq_length
    return 2.0 * matmul_parameters(config, lm_head) + attention


def pass_flops(
    config, tokens: int, seq_length: int, kind: str = "forward", lm_head: bool = True
) -> float:
    """FLOPs of one pass of ``kind`` over ``tokens`` tokens in sequences of ``seq_length``."""
    if kind not in PASSES:
        raise ValueError(f"unknown pass '{kind}' (known: {', '.join(PASSES)})")
    return PASSES[kind] * forward_flops_per_token(config, seq_length, lm_head) * float(tokens)


def training_flops_per_token(config, seq_length: int) -> float:
    """Forward + backward FLOPs per trained token: the engine's MFU numerator."""
    return PASSES["train"] * forward_flops_per_token(config, seq_length)
