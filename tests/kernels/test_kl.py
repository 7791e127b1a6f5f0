"""Token KL(p_target || p_proxy) against ``F.kl_div(log_softmax(proxy), softmax(target))``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megatron_bliss.kernels import linear_token_kl_divergence, token_kl_divergence

B, T, H, V = 2, 5, 4, 9


def _logits(seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    proxy = (2 * torch.randn(B, T, V, generator=gen, dtype=dtype)).requires_grad_()
    target = 2 * torch.randn(B, T, V, generator=gen, dtype=dtype)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 3:] = False
    return proxy, target, mask


def _naive(proxy, target, mask, reduction):
    per_token = F.kl_div(F.log_softmax(proxy, -1), F.softmax(target, -1), reduction="none").sum(-1)
    per_token = per_token * mask
    if reduction == "none":
        return per_token
    return per_token.sum() / mask.sum() if reduction == "mean" else per_token.sum()


def test_naive_reference_matches_batchmean_when_unmasked():
    proxy, target, _ = _logits()
    full = torch.ones(B, T, dtype=torch.bool)
    expected = F.kl_div(
        F.log_softmax(proxy.reshape(-1, V), -1),
        F.softmax(target.reshape(-1, V), -1),
        reduction="batchmean",
    )
    torch.testing.assert_close(token_kl_divergence(proxy, target, full), expected)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 3, 100])
def test_token_kl_values_and_grads(reduction, fused, chunk_size):
    proxy, target, mask = _logits()
    expected = _naive(proxy, target, mask, reduction)
    got = token_kl_divergence(
        proxy, target, mask, reduction=reduction, chunk_size=chunk_size, fused=fused
    )
    torch.testing.assert_close(got, expected)
    probe = torch.randn_like(expected)
    torch.testing.assert_close(
        torch.autograd.grad((got * probe).sum(), proxy)[0],
        torch.autograd.grad((expected * probe).sum(), proxy)[0],
    )


def test_token_kl_of_identical_distributions_is_zero():
    proxy, _, mask = _logits()
    shifted = proxy.detach() + 3.0  # same softmax
    torch.testing.assert_close(
        token_kl_divergence(proxy, shifted, mask), torch.tensor(0.0, dtype=torch.float64)
    )


def test_token_kl_plain_path_double_backward():
    proxy, target, mask = _logits()
    small = proxy[:1, :2].detach().requires_grad_()

    def loss(p):
        return token_kl_divergence(p, target[:1, :2], mask[:1, :2], create_graph=True)

    assert torch.autograd.gradcheck(loss, (small,))
    assert torch.autograd.gradgradcheck(loss, (small,))


def test_token_kl_chunked_gradcheck():
    proxy, target, mask = _logits()
    small = proxy[:, :3].detach().requires_grad_()

    def loss(p):
        return token_kl_divergence(p, target[:, :3], mask[:, :3], chunk_size=2, fused=True)

    assert torch.autograd.gradcheck(loss, (small,))


def _linear_inputs(seed=1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=gen, dtype=dtype).requires_grad_()
    weight = torch.randn(V, H, generator=gen, dtype=dtype).requires_grad_()
    bias = torch.randn(V, generator=gen, dtype=dtype).requires_grad_()
    target_hidden = torch.randn(B, T, H + 2, generator=gen, dtype=dtype)
    target_weight = torch.randn(V, H + 2, generator=gen, dtype=dtype)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, :2] = False
    return hidden, weight, bias, target_hidden, target_weight, mask


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("target_kind", ["logits", "hidden"])
@pytest.mark.parametrize("fused", [True, False])
def test_linear_kl_matches_naive(reduction, target_kind, fused):
    hidden, weight, bias, target_hidden, target_weight, mask = _linear_inputs()
    target_logits = target_hidden @ target_weight.T
    expected = _naive(F.linear(hidden, weight, bias), target_logits, mask, reduction)
    target_args = (
        {"target_logits": target_logits}
        if target_kind == "logits"
        else {"target_hidden": target_hidden, "target_weight": target_weight}
    )
    got = linear_token_kl_divergence(
        hidden,
        weight,
        mask=mask,
        proxy_bias=bias,
        reduction=reduction,
        chunk_size=3,
        fused=fused,
        **target_args,
    )
    torch.testing.assert_close(got, expected)
    probe = torch.randn_like(expected)
    for g_got, g_exp in zip(
        torch.autograd.grad((got * probe).sum(), (hidden, weight, bias)),
        torch.autograd.grad((expected * probe).sum(), (hidden, weight, bias)),
    ):
        torch.testing.assert_close(g_got, g_exp)


def test_linear_kl_bf16_close_to_fp64():
    hidden, weight, _, target_hidden, target_weight, mask = _linear_inputs()
    target_logits = target_hidden @ target_weight.T
    expected = _naive(hidden @ weight.T, target_logits, mask, "mean")
    got = linear_token_kl_divergence(
        hidden.detach().bfloat16().requires_grad_(),
        weight.detach().bfloat16(),
        target_logits.bfloat16(),
        mask,
        chunk_size=4,
    )
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected.detach(), atol=5e-2, rtol=5e-2)


def test_linear_kl_bad_inputs():
    hidden, weight, _, _, _, mask = _linear_inputs()
    with pytest.raises(ValueError, match="give target_logits"):
        linear_token_kl_divergence(hidden, weight, mask=mask)
    with pytest.raises(ValueError, match="target_logits must have shape"):
        linear_token_kl_divergence(hidden, weight, torch.zeros(B, T, V + 1), mask)
    with pytest.raises(ValueError, match="mask must have shape"):
        token_kl_divergence(hidden, hidden.detach(), mask[:1])
