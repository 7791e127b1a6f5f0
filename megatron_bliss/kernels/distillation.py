"""Cross-entropy plus KL to a frozen teacher from one pass over the LM head.

Why: a distillation-regularised loss ``sum_r a_r CE_r + b_r KL(p_teacher,r || p_r)`` (BLISS's
lower level: score-weighted CE plus ``gamma`` times the KL to the target) computed as two losses
walks the ``[N, V]`` logits twice, and in plain autograd keeps several fp32 copies of them (two
log-softmaxes, the teacher's probabilities, their gradients). Both terms share the student's
softmax, and their gradients add up to one expression per chunk:

    d loss_r / d z_r = (a_r + b_r) softmax(z_r) - a_r onehot(y_r) - b_r p_teacher,r

so one row head (see :mod:`megatron_bliss.kernels.chunked`) produces both losses and that
gradient, and :class:`~megatron_bliss.kernels.chunked.FusedLinearLoss` folds it into the hidden
and weight gradients during the forward: three LM-head matmuls per chunk (six for the two losses
fused separately), and only one chunk of logits alive. ``fused=False`` is the plain-autograd
reference (double backward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megatron_bliss.kernels import chunked
from megatron_bliss.kernels.cross_entropy import _check_inputs
from megatron_bliss.kernels.kl import KLHead


class CrossEntropyKLHead:
    """Row head: ``a_r CE_r + b_r KL_r`` against labels and teacher logits made chunk by chunk."""

    def __init__(self, labels, ignore_index, ce_weights, kl_weights, teacher: KLHead):
        self.labels = labels
        self.ignore_index = ignore_index
        self.ce_weights = ce_weights
        self.kl_weights = kl_weights
        self.teacher = teacher

    def __call__(self, logits, start, end, row_scale):
        labels = self.labels[start:end]
        valid = labels != self.ignore_index
        safe = torch.where(valid, labels, torch.zeros_like(labels)).unsqueeze(1)
        a = torch.where(
            valid, self.ce_weights[start:end], torch.zeros_like(labels, dtype=logits.dtype)
        )
        b = self.kl_weights[start:end].to(logits.dtype)
        log_teacher = torch.log_softmax(self.teacher.target_chunk(start, end).to(logits.dtype), -1)
        teacher = log_teacher.exp()
        log_student = logits.copy_(torch.log_softmax(logits, dim=-1))
        ce = -log_student.gather(1, safe).squeeze(1)
        kl = torch.einsum("ij,ij->i", teacher, log_teacher.sub_(log_student))
        loss = a * ce + b * kl
        if row_scale is not None:
            log_student.exp_().mul_((a + b).unsqueeze(1))
            log_student.scatter_add_(1, safe, -a.unsqueeze(1)).sub_(teacher.mul_(b.unsqueeze(1)))
            log_student.mul_(row_scale.unsqueeze(1))
        return loss


def reference_cross_entropy_with_kl(
    hidden, weight, labels, teacher_logits, ce_weights, kl_weights, *, bias=None, ignore_index=-100
) -> torch.Tensor:
    """Plain-autograd ``sum_r a_r CE_r + b_r KL_r`` (all logits materialised; twice differentiable)."""
    logits = F.linear(hidden, weight, bias)
    logits = logits.to(chunked.accumulation_dtype(logits.dtype))
    ce = F.cross_entropy(logits, labels.long(), ignore_index=ignore_index, reduction="none")
    log_teacher = F.log_softmax(teacher_logits.detach().to(logits.dtype), dim=-1)
    kl = (log_teacher.exp() * (log_teacher - F.log_softmax(logits, dim=-1))).sum(-1)
    valid = labels != ignore_index
    ce_weights = torch.where(valid, ce_weights.to(ce.dtype), torch.zeros_like(ce))
    return (ce_weights * ce).sum() + (kl_weights.to(kl.dtype) * kl).sum()


def linear_cross_entropy_with_kl(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ce_weights: torch.Tensor,
    kl_weights: torch.Tensor,
    *,
    teacher_logits: torch.Tensor | None = None,
    teacher_hidden: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    fused: bool | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """``sum_r ce_weights_r CE_r + kl_weights_r KL(teacher_r || student_r)`` over rows ``[N]``.

    The student's logits are ``hidden [N, H] @ weight [V, H].T (+ bias)``; the teacher is given
    as ``teacher_logits [N, V]`` or as ``teacher_hidden [N, H_t]`` with ``teacher_weight [V, H_t]``
    (its logits are then made one chunk at a time too) and gets no gradient, nor do the row
    weights on the fused path. Rows whose label is
    ``ignore_index`` contribute no CE (their KL still counts unless its weight is 0). ``fused``:
    ``True`` chunked with the gradients made in the forward, ``False`` the plain reference,
    ``None`` fused unless ``create_graph``.
    """
    _check_inputs(hidden, weight, bias, labels, ignore_index, 0.0)
    for name, row_weights in (("ce_weights", ce_weights), ("kl_weights", kl_weights)):
        if row_weights.shape != labels.shape:
            raise ValueError(
                f"linear_cross_entropy_with_kl: {name} must have shape {tuple(labels.shape)}, "
                f"got {tuple(row_weights.shape)}"
            )
    if teacher_logits is None and (teacher_hidden is None or teacher_weight is None):
        raise ValueError(
            "linear_cross_entropy_with_kl: give teacher_logits, or teacher_hidden and "
            "teacher_weight"
        )
    teacher = KLHead(
        torch.ones_like(labels, dtype=torch.bool),
        target_logits=teacher_logits,
        target_hidden=teacher_hidden,
        target_weight=teacher_weight,
    )
    if not chunked.resolve_fused(fused, create_graph):
        logits = teacher.target_chunk(0, len(labels))
        return reference_cross_entropy_with_kl(
            hidden, weight, labels, logits, ce_weights, kl_weights, bias=bias,
            ignore_index=ignore_index,
        )  # fmt: skip
    acc = chunked.accumulation_dtype(hidden.dtype)
    head = CrossEntropyKLHead(
        labels, ignore_index, ce_weights.detach().to(acc), kl_weights.detach().to(acc), teacher
    )
    chunk_rows = chunked.resolve_chunk_rows(
        chunk_size, hidden.shape[0], weight.shape[0], hidden.device
    )
    ones = torch.ones(hidden.shape[0], dtype=acc, device=hidden.device)
    return chunked.linear_weighted_loss(hidden, weight, bias, ones, head, chunk_rows)
