"""``adam_state.pt`` export: every down-projection's full-shape second moment, the optimizer's
step and betas; the same numbers whether ZeRO-2, ZeRO-3 or no ZeRO partitioned them."""

from __future__ import annotations

import pytest
import torch

from megatron_bliss.engine.optimizer_state import ADAM_STATE_FILE
from megatron_bliss.engine.trainer import pretrain
from megatron_bliss.models.parameter_subsets import matching_linear_modules
from megatron_bliss.models.presets import build_model

STEPS = 3


def subset_shapes() -> dict[str, torch.Size]:
    model = build_model("pythia-tiny", vocab_size=512)
    return {
        f"{name}.{kind}": getattr(module, kind).shape
        for name, module in matching_linear_modules(model, "down_proj")
        for kind in ("weight", "bias")
    }


def trained_adam_state(make_config, tmp_path, zero_stage: int) -> dict:
    config = make_config(
        f"zero{zero_stage}",
        **{
            "train.train_steps": STEPS,
            "deepspeed.zero_stage": zero_stage,
            "checkpoint.adam_state_params": "[down_proj]",
            "optimizer.beta2": 0.97,
        },
    )
    pretrain(config)
    path = tmp_path / f"zero{zero_stage}" / "checkpoints" / f"global_step{STEPS}" / ADAM_STATE_FILE
    assert path.exists()
    return torch.load(path, map_location="cpu", weights_only=True)


def test_adam_state_matches_across_zero_stages(make_config, tmp_path):
    shapes = subset_shapes()
    assert len(shapes) == 4  # pythia-tiny: 2 layers x (weight, bias)
    states = {stage: trained_adam_state(make_config, tmp_path, stage) for stage in (2, 3, 0)}
    for state in states.values():
        assert state["step"] == STEPS
        assert (state["beta1"], state["beta2"], state["eps"]) == pytest.approx((0.9, 0.97, 1e-8))
        assert {name: v.shape for name, v in state["exp_avg_sq"].items()} == shapes
        for value in state["exp_avg_sq"].values():
            assert value.dtype == torch.float32 and torch.isfinite(value).all()
            assert (value > 0).all()
    for stage in (3, 0):  # same seed, same math: equal up to reduction order
        for name, value in states[2]["exp_avg_sq"].items():
            other = states[stage]["exp_avg_sq"][name]
            torch.testing.assert_close(other, value, rtol=1e-5, atol=1e-6 * float(value.max()))


def test_unknown_layer_name_fails_before_training(make_config):
    config = make_config("typo", **{"checkpoint.adam_state_params": "[no_such_layer]"})
    with pytest.raises(ValueError, match=r"no_such_layer.*no linear layer"):
        pretrain(config)
