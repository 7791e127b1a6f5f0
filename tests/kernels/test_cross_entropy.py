"""Chunked linear cross-entropy against the naive ``F.cross_entropy(hidden @ W.T)``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megatron_bliss.kernels import (
    linear_cross_entropy,
    sequence_cross_entropy,
    weighted_sequence_cross_entropy,
)

N, H, V = 13, 6, 11


def _inputs(dtype=torch.float64, seed=0, with_bias=True, ignore_rows=(2, 7)):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=gen, dtype=dtype).requires_grad_()
    weight = torch.randn(V, H, generator=gen, dtype=dtype).requires_grad_()
    bias = torch.randn(V, generator=gen, dtype=dtype).requires_grad_() if with_bias else None
    labels = torch.randint(0, V, (N,), generator=gen)
    labels[list(ignore_rows)] = -100
    return hidden, weight, bias, labels


def _grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


def _naive(hidden, weight, bias, labels, reduction, smoothing=0.0):
    logits = F.linear(hidden, weight, bias).to(torch.promote_types(hidden.dtype, torch.float32))
    return F.cross_entropy(logits, labels, reduction=reduction, label_smoothing=smoothing)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk_size", [1, 4, 5, 64])
def test_fused_matches_naive_values_and_grads(reduction, chunk_size):
    hidden, weight, bias, labels = _inputs()
    expected = _naive(hidden, weight, bias, labels, reduction)
    got = linear_cross_entropy(
        hidden, weight, labels, bias=bias, reduction=reduction, chunk_size=chunk_size, fused=True
    )
    torch.testing.assert_close(got, expected)
    probe = torch.randn_like(expected)
    for g_got, g_exp in zip(
        _grads((got * probe).sum(), (hidden, weight, bias)),
        _grads((expected * probe).sum(), (hidden, weight, bias)),
    ):
        torch.testing.assert_close(g_got, g_exp)
    if reduction == "none":
        assert got[2] == 0 and got[7] == 0


@pytest.mark.parametrize("smoothing", [0.1, 0.5])
def test_label_smoothing_matches_torch(smoothing):
    hidden, weight, bias, labels = _inputs(seed=1)
    expected = _naive(hidden, weight, bias, labels, "mean", smoothing)
    got = linear_cross_entropy(
        hidden, weight, labels, bias=bias, label_smoothing=smoothing, chunk_size=3, fused=True
    )
    torch.testing.assert_close(got, expected)
    for g_got, g_exp in zip(
        _grads(got, (hidden, weight, bias)), _grads(expected, (hidden, weight, bias))
    ):
        torch.testing.assert_close(g_got, g_exp)


def test_custom_ignore_index_and_no_bias():
    hidden, weight, _, labels = _inputs(with_bias=False, ignore_rows=())
    labels[[0, 5]] = 3
    expected = F.cross_entropy(hidden @ weight.T, labels, ignore_index=3)
    got = linear_cross_entropy(hidden, weight, labels, ignore_index=3, chunk_size=4)
    torch.testing.assert_close(got, expected)
    for g_got, g_exp in zip(_grads(got, (hidden, weight)), _grads(expected, (hidden, weight))):
        torch.testing.assert_close(g_got, g_exp)


def test_bf16_inputs_accumulate_in_fp32():
    hidden64, weight64, _, labels = _inputs(with_bias=False)
    hidden = hidden64.detach().to(torch.bfloat16).requires_grad_()
    weight = weight64.detach().to(torch.bfloat16).requires_grad_()
    expected = F.cross_entropy(hidden.detach().double() @ weight.detach().double().T, labels)
    got = linear_cross_entropy(hidden, weight, labels, chunk_size=4)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, atol=2e-2, rtol=2e-2)
    got.backward()
    assert hidden.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.bfloat16
    ref_h, ref_w = torch.autograd.grad(
        F.cross_entropy(hidden64 @ weight64.T, labels), (hidden64, weight64)
    )
    torch.testing.assert_close(hidden.grad.double(), ref_h, atol=3e-2, rtol=5e-2)
    torch.testing.assert_close(weight.grad.double(), ref_w, atol=3e-2, rtol=5e-2)


def test_mean_gradient_scales_with_upstream_and_refuses_second_backward():
    hidden, weight, bias, labels = _inputs()
    loss = linear_cross_entropy(hidden, weight, labels, bias=bias, chunk_size=5)
    (3.0 * loss).backward(retain_graph=True)
    expected = torch.autograd.grad(3.0 * _naive(hidden, weight, bias, labels, "mean"), hidden)[0]
    torch.testing.assert_close(hidden.grad, expected)
    with pytest.raises(RuntimeError, match="backpropagated once"):
        loss.backward()


def test_no_grad_scoring_path_matches():
    hidden, weight, bias, labels = _inputs()
    with torch.no_grad():
        got = linear_cross_entropy(
            hidden, weight, labels, bias=bias, reduction="none", chunk_size=2
        )
        expected = _naive(hidden, weight, bias, labels, "none")
    torch.testing.assert_close(got, expected)


def test_plain_path_supports_double_backward():
    hidden, weight, _, labels = _inputs(ignore_rows=(1,))
    small = (hidden[:4].detach().requires_grad_(), weight[:5].detach().requires_grad_())
    labels = labels[:4].clamp(max=4)

    def loss(h, w):
        return linear_cross_entropy(h, w, labels, fused=None, create_graph=True)

    assert torch.autograd.gradcheck(loss, small)
    assert torch.autograd.gradgradcheck(loss, small)


def test_fused_none_path_gradcheck():
    """The recompute-in-backward path is a true autograd Function: check it numerically."""
    hidden, weight, bias, labels = _inputs()
    inputs = (hidden[:5].detach().requires_grad_(), weight.detach().requires_grad_(), bias)

    def loss(h, w, b):
        return linear_cross_entropy(
            h, w, labels[:5], bias=b, reduction="none", chunk_size=2, fused=True
        )

    assert torch.autograd.gradcheck(loss, inputs)


def test_dispatch_flags():
    hidden, weight, _, labels = _inputs(with_bias=False)
    fused_loss = linear_cross_entropy(hidden, weight, labels)
    assert "FusedLinearLoss" in type(fused_loss.grad_fn).__name__
    plain_loss = linear_cross_entropy(hidden, weight, labels, create_graph=True)
    assert "FusedLinearLoss" not in type(plain_loss.grad_fn).__name__
    with pytest.raises(ValueError, match="no double backward"):
        linear_cross_entropy(hidden, weight, labels, fused=True, create_graph=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reduction": "avg"}, "reduction must be one of"),
        ({"chunk_size": 0}, "chunk_size must be a positive"),
        ({"label_smoothing": 1.5}, "label_smoothing"),
    ],
)
def test_bad_arguments(kwargs, message):
    hidden, weight, _, labels = _inputs(with_bias=False)
    with pytest.raises(ValueError, match=message):
        linear_cross_entropy(hidden, weight, labels, **kwargs)


def test_bad_shapes_and_labels():
    hidden, weight, _, labels = _inputs(with_bias=False)
    with pytest.raises(ValueError, match="labels must lie in"):
        linear_cross_entropy(hidden, weight, torch.full((N,), V))
    with pytest.raises(ValueError, match="labels must have shape"):
        linear_cross_entropy(hidden, weight, labels[:3])
    with pytest.raises(ValueError, match="expected hidden"):
        linear_cross_entropy(hidden, weight[:, :3], labels)


def _sequence_inputs(dtype=torch.float64):
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(3, 5, H, generator=gen, dtype=dtype).requires_grad_()
    weight = torch.randn(V, H, generator=gen, dtype=dtype).requires_grad_()
    labels = torch.randint(0, V, (3, 5), generator=gen)
    labels[0, 3:] = -100
    labels[2, :] = -100  # a sequence with no valid token: CE 0
    return hidden, weight, labels


def _naive_sequence(hidden, weight, labels):
    token = F.cross_entropy((hidden @ weight.T).transpose(1, 2), labels, reduction="none")
    counts = (labels != -100).sum(1).clamp(min=1)
    return token.sum(1) / counts


@pytest.mark.parametrize("fused", [True, False])
def test_sequence_cross_entropy(fused):
    hidden, weight, labels = _sequence_inputs()
    expected = _naive_sequence(hidden, weight, labels)
    got = sequence_cross_entropy(hidden, weight, labels, chunk_size=4, fused=fused)
    torch.testing.assert_close(got, expected)
    assert got[2] == 0
    probe = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    for g_got, g_exp in zip(
        _grads((got * probe).sum(), (hidden, weight)),
        _grads((expected * probe).sum(), (hidden, weight)),
    ):
        torch.testing.assert_close(g_got, g_exp)


@pytest.mark.parametrize("fused", [True, False])
def test_weighted_sequence_cross_entropy_grads_reach_weights(fused):
    hidden, weight, labels = _sequence_inputs()
    scores = torch.tensor([0.2, 0.9, 0.4], dtype=torch.float64, requires_grad=True)
    expected = (torch.softmax(scores, 0) * _naive_sequence(hidden, weight, labels)).sum()
    got = weighted_sequence_cross_entropy(
        hidden, weight, labels, torch.softmax(scores, 0), chunk_size=4, fused=fused
    )
    torch.testing.assert_close(got, expected)
    for g_got, g_exp in zip(
        _grads(got, (hidden, weight, scores)), _grads(expected, (hidden, weight, scores))
    ):
        torch.testing.assert_close(g_got, g_exp)
