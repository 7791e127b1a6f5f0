"""CE + KL to a teacher in one chunked pass, against F.cross_entropy and F.kl_div written out."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megatron_bliss.kernels.distillation import linear_cross_entropy_with_kl

N, H, V = 11, 6, 13


def _inputs(seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=gen, dtype=dtype).requires_grad_()
    weight = torch.randn(V, H, generator=gen, dtype=dtype).requires_grad_()
    bias = torch.randn(V, generator=gen, dtype=dtype).requires_grad_()
    labels = torch.randint(0, V, (N,), generator=gen)
    labels[3] = -100
    teacher_hidden = torch.randn(N, H, generator=gen, dtype=dtype)
    teacher_weight = torch.randn(V, H, generator=gen, dtype=dtype)
    ce_weights = torch.rand(N, generator=gen, dtype=dtype)
    kl_weights = torch.rand(N, generator=gen, dtype=dtype)
    return hidden, weight, bias, labels, teacher_hidden, teacher_weight, ce_weights, kl_weights


def _written_out(hidden, weight, bias, labels, teacher_logits, ce_weights, kl_weights):
    logits = hidden @ weight.T + bias
    valid = labels != -100
    ce = F.cross_entropy(logits, labels, reduction="none")
    kl = F.kl_div(F.log_softmax(logits, -1), F.softmax(teacher_logits, -1), reduction="none")
    return (ce_weights * ce * valid).sum() + (kl_weights * kl.sum(-1)).sum()


@pytest.mark.parametrize("teacher_as", ["logits", "hidden"])
@pytest.mark.parametrize("fused", [True, False])
def test_loss_and_gradients_match_the_written_out_loss(teacher_as, fused):
    hidden, weight, bias, labels, t_hidden, t_weight, ce_w, kl_w = _inputs()
    teacher_logits = t_hidden @ t_weight.T
    teacher = (
        {"teacher_logits": teacher_logits}
        if teacher_as == "logits"
        else {"teacher_hidden": t_hidden, "teacher_weight": t_weight}
    )
    loss = linear_cross_entropy_with_kl(
        hidden, weight, labels, ce_w, kl_w, bias=bias, chunk_size=4, fused=fused, **teacher
    )
    grads = torch.autograd.grad(loss, [hidden, weight, bias])
    expected = _written_out(hidden, weight, bias, labels, teacher_logits, ce_w, kl_w)
    expected_grads = torch.autograd.grad(expected, [hidden, weight, bias])
    torch.testing.assert_close(loss, expected)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


def test_reference_path_is_twice_differentiable():
    hidden, weight, _, labels, t_hidden, t_weight, ce_w, kl_w = _inputs()
    loss = linear_cross_entropy_with_kl(
        hidden, weight, labels, ce_w, kl_w, teacher_hidden=t_hidden, teacher_weight=t_weight,
        create_graph=True,
    )  # fmt: skip
    (grad,) = torch.autograd.grad(loss, [hidden], create_graph=True)
    (hvp,) = torch.autograd.grad(grad, [hidden], grad_outputs=torch.ones_like(grad))
    assert torch.isfinite(hvp).all() and hvp.abs().sum() > 0


def test_float32_fused_matches_float64():
    inputs = _inputs()
    single = [t.detach().float() if t.is_floating_point() else t for t in inputs]
    hidden, weight, bias, labels, t_hidden, t_weight, ce_w, kl_w = inputs
    exact = linear_cross_entropy_with_kl(
        hidden, weight, labels, ce_w, kl_w, bias=bias, teacher_hidden=t_hidden,
        teacher_weight=t_weight, fused=False,
    )  # fmt: skip
    h, w, b, labels, th, tw, cw, kw = single
    fast = linear_cross_entropy_with_kl(
        h, w, labels, cw, kw, bias=b, teacher_hidden=th, teacher_weight=tw, fused=True
    )
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast.double(), exact.detach(), rtol=1e-5, atol=1e-5)


def test_mismatched_row_weights_are_refused():
    hidden, weight, _, labels, t_hidden, t_weight, ce_w, kl_w = _inputs()
    with pytest.raises(ValueError, match="kl_weights must have shape"):
        linear_cross_entropy_with_kl(
            hidden, weight, labels, ce_w, kl_w[:-1], teacher_hidden=t_hidden,
            teacher_weight=t_weight,
        )  # fmt: skip


def test_a_missing_teacher_is_refused():
    hidden, weight, _, labels, _, _, ce_w, kl_w = _inputs()
    with pytest.raises(ValueError, match="give teacher_logits"):
        linear_cross_entropy_with_kl(hidden, weight, labels, ce_w, kl_w)
