"""Triton kernels and the CUDA dispatch against the torch reference (run on a GPU machine).

``pytest -m gpu tests/kernels/test_triton_gpu.py``; skipped without CUDA + triton. The same row
checks run on CPU under ``TRITON_INTERPRET=1`` in ``test_triton_interpret.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megatron_bliss.kernels import (
    HAS_TRITON,
    linear_cross_entropy,
    linear_token_kl_divergence,
    token_kl_divergence,
)
from megatron_bliss.kernels.cross_entropy import torch_cross_entropy_rows
from megatron_bliss.kernels.kl import torch_kl_rows

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and triton"
    ),
]


def check_cross_entropy_rows(device, vocab=5003, rows=37, smoothing=0.0):
    """Triton CE rows == torch CE rows (loss and in-place scaled gradient), ignored rows zero."""
    from megatron_bliss.kernels.triton_cross_entropy import triton_cross_entropy_rows

    gen = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(rows, vocab, generator=gen)).to(device)
    labels = torch.randint(0, vocab, (rows,), generator=gen).to(device)
    labels[::7] = -100
    scale = torch.rand(rows, generator=gen).to(device)
    expected_grad = logits.clone()
    expected = torch_cross_entropy_rows(expected_grad, labels, scale, -100, smoothing)
    got_grad = logits.clone()
    got = triton_cross_entropy_rows(got_grad, labels, scale, -100, smoothing)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(got_grad, expected_grad, atol=1e-6, rtol=1e-4)
    untouched = logits.clone()
    no_grad = triton_cross_entropy_rows(untouched, labels, None, -100, smoothing)
    torch.testing.assert_close(no_grad, expected, atol=1e-4, rtol=1e-5)
    assert torch.equal(untouched, logits)


def check_kl_rows(device, vocab=5003, rows=37):
    """Triton KL rows == torch KL rows (loss and in-place scaled gradient), masked rows zero."""
    from megatron_bliss.kernels.triton_kl import triton_kl_rows

    gen = torch.Generator().manual_seed(1)
    proxy = (3 * torch.randn(rows, vocab, generator=gen)).to(device)
    target = (3 * torch.randn(rows, vocab, generator=gen)).to(device)
    valid = (torch.arange(rows) % 5 != 0).to(device)
    scale = torch.rand(rows, generator=gen).to(device)
    expected_grad = proxy.clone()
    expected = torch_kl_rows(expected_grad, target, valid, scale)
    got_grad = proxy.clone()
    got = triton_kl_rows(got_grad, target, valid, scale)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_grad, expected_grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_triton_cross_entropy_rows(smoothing):
    check_cross_entropy_rows("cuda", smoothing=smoothing)
    check_cross_entropy_rows("cuda", vocab=50304, rows=5, smoothing=smoothing)


def test_triton_kl_rows():
    check_kl_rows("cuda")
    check_kl_rows("cuda", vocab=50304, rows=5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_cross_entropy_cuda_matches_reference(dtype, reduction):
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(300, 64, generator=gen).to("cuda", dtype).requires_grad_()
    weight = (0.2 * torch.randn(4099, 64, generator=gen)).to("cuda", dtype).requires_grad_()
    labels = torch.randint(0, 4099, (300,), generator=gen).cuda()
    labels[:10] = -100
    got = linear_cross_entropy(hidden, weight, labels, reduction=reduction, chunk_size=128)
    ref_logits = (hidden.float() @ weight.float().T).detach().requires_grad_()
    expected = F.cross_entropy(ref_logits, labels, reduction=reduction)
    tol = {"atol": 1e-3, "rtol": 1e-3} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
    torch.testing.assert_close(got.float(), expected, **tol)
    probe = torch.rand_like(expected)
    grad_h, grad_w = torch.autograd.grad((got * probe).sum(), (hidden, weight))
    (grad_logits,) = torch.autograd.grad((expected * probe).sum(), ref_logits)
    torch.testing.assert_close(grad_h.float(), grad_logits @ weight.float(), **tol)
    torch.testing.assert_close(grad_w.float(), grad_logits.T @ hidden.float(), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kl_cuda_matches_reference(dtype):
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 50, 32, generator=gen).to("cuda", dtype).requires_grad_()
    weight = (0.3 * torch.randn(4099, 32, generator=gen)).to("cuda", dtype).requires_grad_()
    target = torch.randn(2, 50, 4099, generator=gen).cuda()
    mask = torch.rand(2, 50, generator=gen).cuda() > 0.2
    got = linear_token_kl_divergence(hidden, weight, target, mask, chunk_size=33)
    expected = token_kl_divergence(hidden @ weight.T, target, mask, fused=False)
    tol = {"atol": 1e-4, "rtol": 1e-3} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(got, expected, **tol)
    got_grads = torch.autograd.grad(got, (hidden, weight))
    exp_grads = torch.autograd.grad(expected, (hidden, weight))
    for g_got, g_exp in zip(got_grads, exp_grads):
        torch.testing.assert_close(g_got.float(), g_exp.float(), **tol)
