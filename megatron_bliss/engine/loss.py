"""The training loss with the LM head fused into cross-entropy, so ``[B, T, V]`` logits never exist.

With Pythia's 50k vocabulary the fp32 logits of one 16 x 1024 micro-batch take 3.3 GB, more than
the rest of a 410M model's activations. ``FusedHeadLoss`` makes the model's output layer return
the masked mean cross-entropy (``megatron_bliss.kernels.linear_cross_entropy``: chunked, gradients
built in the forward, Triton on CUDA) while it is armed with targets, and plain logits otherwise
(validation, export, generation). The loss is computed inside the output layer's own forward, so
ZeRO-3 gathers and releases its weight exactly as for the unfused model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from megatron_bliss.data.target_set import IGNORE_INDEX
from megatron_bliss.kernels import linear_cross_entropy


class FusedHeadLoss:
    def __init__(self, model: torch.nn.Module):
        self.head = model.get_output_embeddings()
        if not isinstance(self.head, torch.nn.Linear):
            raise ValueError(f"fused loss needs a Linear output layer, got {type(self.head)}")
        self._logits_forward = self.head.forward
        self._targets: tuple[torch.Tensor, torch.Tensor] | None = None
        self.head.forward = self._forward

    @contextlib.contextmanager
    def targets(self, labels: torch.Tensor, loss_mask: torch.Tensor) -> Iterator[None]:
        """While active, the output layer computes the loss instead of logits (read it from the
        model's output with ``loss``)."""
        self._targets = (labels, loss_mask)
        try:
            yield
        finally:
            self._targets = None

    @staticmethod
    def loss(outputs) -> torch.Tensor:
        """The scalar masked mean loss of a forward run under ``targets``. The output layer
        returns it where the logits would be, and must: ZeRO-3 attaches the hooks that gather
        the layer's weight for the backward to that module output, so the loss travels in the
        model output's ``logits`` field, and is taken out only here."""
        loss = outputs.logits
        if loss.dim() != 0:
            raise RuntimeError("FusedHeadLoss.loss: the forward ran without targets() armed")
        return loss

    def _forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self._targets is None:
            return self._logits_forward(hidden)
        labels, loss_mask = self._targets
        labels = labels.masked_fill(loss_mask == 0, IGNORE_INDEX).reshape(-1)
        if not (labels != IGNORE_INDEX).any():  # every position masked: a zero loss with a graph
            return hidden.sum() * 0.0
        return linear_cross_entropy(
            hidden.reshape(-1, hidden.shape[-1]),
            self.head.weight,
            labels,
            bias=self.head.bias,
            reduction="mean",
        )
