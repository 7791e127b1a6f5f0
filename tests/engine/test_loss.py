"""The fused LM-head loss trains exactly like materialised logits + cross-entropy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_bliss.engine.batches import masked_lm_loss
from megatron_bliss.engine.loss import FusedHeadLoss
from megatron_bliss.engine.trainer import pretrain
from megatron_bliss.models.presets import build_model


def test_fused_head_matches_logits_loss_and_gradients():
    torch.manual_seed(0)
    model = build_model("pythia-tiny", vocab_size=512).double()
    ids = torch.randint(0, 512, (3, 17))
    inputs, labels = ids[:, :-1], ids[:, 1:]
    mask = torch.ones(labels.shape)
    mask[0, :5] = 0.0  # eod_mask_loss-style holes

    reference = masked_lm_loss(model(input_ids=inputs).logits, labels, mask)
    reference.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    fused = FusedHeadLoss(model)
    with fused.targets(labels, mask):
        loss = fused.loss(model(input_ids=inputs))
    loss.backward()
    torch.testing.assert_close(loss.float(), reference, rtol=1e-6, atol=1e-6)
    for got, want in zip((p.grad for p in model.parameters()), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # Disarmed, the head returns logits again (validation, export, generation), which are no loss.
    outputs = model(input_ids=inputs)
    assert outputs.logits.shape == (3, 16, 512)
    with pytest.raises(RuntimeError, match="without targets"):
        fused.loss(outputs)


def test_fused_loss_run_matches_logits_run_under_zero3(make_config):
    logits_run = pretrain(make_config("logits", **{"train.loss_kernel": "logits"}))
    fused_run = pretrain(make_config("fused", **{"train.loss_kernel": "fused"}))
    np.testing.assert_allclose(fused_run["losses"], logits_run["losses"], rtol=1e-5)


def test_zero3_run_leaves_functional_linear_alone(make_config):
    pretrain(make_config("zero3", **{"train.train_steps": 1}))
    assert torch.nn.functional.linear is torch._C._nn.linear  # torch's own, not ZeRO-3's
