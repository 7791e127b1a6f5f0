"""The proxy's fused losses (LM head inside the loss kernel) against the plain-logits definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megatron_bliss.data.target_set import IGNORE_INDEX
from megatron_bliss.models.presets import build_model
from megatron_bliss.selection.proxy import (
    lm_logits,
    sequence_ce,
    sequence_kl,
    sequence_losses,
    target_loss_sum,
    weighted_lower_loss,
)

VOCAB, LENGTH = 96, 12


def _model(seed: int, vocab: int = VOCAB) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("pythia-tiny", vocab, 64, "sdpa").double()


def _tokens(rows: int = 3) -> torch.Tensor:
    return torch.randint(0, VOCAB, (rows, LENGTH + 1), generator=torch.Generator().manual_seed(1))


def _grads(loss, model):
    return torch.autograd.grad(loss, list(model.parameters()))


@pytest.mark.parametrize("teacher_vocab", [VOCAB, VOCAB + 32])
def test_weighted_lower_loss_is_weighted_ce_plus_kl(teacher_vocab):
    """Same value and gradients as the plain sum; a teacher padded to another vocabulary is
    compared on the common prefix."""
    proxy, teacher, tokens = _model(0), _model(1, teacher_vocab), _tokens()
    weights = torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64)
    fused = weighted_lower_loss(proxy, tokens, weights, teacher, kl_weight=0.7)
    logits = lm_logits(proxy, tokens)
    with torch.no_grad():
        teacher_logits = lm_logits(teacher, tokens)
    plain = (weights * sequence_ce(logits, tokens)).sum()
    plain = plain + 0.7 * sequence_kl(logits, teacher_logits).sum()
    torch.testing.assert_close(fused, plain)
    for got, want in zip(_grads(fused, proxy), _grads(plain, proxy)):
        torch.testing.assert_close(got, want)


def test_weighted_lower_loss_without_teacher_is_weighted_ce():
    proxy, tokens = _model(0), _tokens()
    weights = torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64)
    fused = weighted_lower_loss(proxy, tokens, weights, None, kl_weight=0.0)
    torch.testing.assert_close(
        fused, (weights * sequence_ce(lm_logits(proxy, tokens), tokens)).sum()
    )


def test_target_loss_sum_ignores_masked_labels():
    model, tokens = _model(0), _tokens()
    labels = tokens.clone()
    labels[0, 5:] = IGNORE_INDEX
    loss, count = target_loss_sum(model, tokens, labels)
    logits = model(input_ids=tokens).logits[:, :-1]
    plain = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum"
    )
    assert count == int((labels[:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(loss, plain)
    for got, want in zip(_grads(loss, model), _grads(plain, model)):
        torch.testing.assert_close(got, want)


def test_sequence_losses_keep_float64():
    model, tokens = _model(0), _tokens()
    losses = sequence_losses(model, tokens)
    assert losses.dtype == torch.float64
    torch.testing.assert_close(losses, sequence_ce(lm_logits(model, tokens), tokens))
