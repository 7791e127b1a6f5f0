"""What the training stage does to its model's blocks: ``train.compile`` (each block compiled in
place trains like the eager model under ZeRO-3, with blocks as ZeRO-3 leaf modules and the eager
model's state-dict keys) and ``model.liger_kernel`` (applied to the stage's model, undone on
close, ``on`` on CPU stopping before the model is built)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from megatron_bliss.engine.hooks import Hooks
from megatron_bliss.engine.trainer import pretrain
from megatron_bliss.models.compile import is_compiled
from tests.models.liger_stub import install_fake_liger


def inspector(seen: dict) -> Hooks:
    def inspect(engine):
        layers = engine.module.gpt_neox.layers
        seen["compiled"] = [is_compiled(layer) for layer in layers]
        seen["leaf"] = [getattr(layer, "_z3_leaf", False) for layer in layers]
        seen["keys"] = list(engine.module.state_dict())

    return Hooks(on_engine_final=inspect)


def test_compiled_blocks_train_with_the_eager_losses(make_config, monkeypatch):
    """Traced by dynamo and AOT autograd as ``train.compile`` does, but with the ``aot_eager``
    backend: what is tested (one graph, no break, ZeRO-3 hooks outside it, the eager losses) does
    not depend on inductor's code generation, which alone took 30 s of C++ compilation here."""
    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters

    from megatron_bliss.models import compile as compile_module

    traced = functools.partial(torch.compile, backend="aot_eager")
    monkeypatch.setattr(compile_module.torch, "compile", traced)
    steps = {"deepspeed.zero_stage": 3, "train.train_steps": 3}
    plain, seen = {}, {}
    eager = pretrain(make_config("eager", **steps), inspector(plain))
    torch._dynamo.reset()
    counters.clear()
    config = make_config("compiled", **steps, **{"train.compile": True})
    compiled = pretrain(config, inspector(seen))
    assert plain["compiled"] == plain["leaf"] == [False, False]
    assert seen["compiled"] == seen["leaf"] == [True, True]
    assert seen["keys"] == plain["keys"]
    # One graph shared by both blocks, and no ZeRO hook traced into it.
    assert counters["stats"]["unique_graphs"] == 1
    assert sum(counters["graph_break"].values()) == 0
    np.testing.assert_allclose(compiled["losses"], eager["losses"], rtol=1e-4)


def test_a_llama_stage_gets_liger_on_its_model_and_undoes_it_on_close(make_config, monkeypatch):
    """Forced past the CUDA check (the stand-in's kernels are transformers' own), a llama stage
    calls liger with its own model, trains through the patched RoPE and leaves transformers'
    modeling_llama as it found it."""
    from transformers.models.llama import modeling_llama

    from megatron_bliss.models import liger

    calls = install_fake_liger(monkeypatch)
    monkeypatch.setattr(liger, "unsupported_reason", lambda model_type, device: None)
    before = modeling_llama.apply_rotary_pos_emb
    steps = {"train.train_steps": 1, "model.preset": "llama-tiny", "checkpoint.save_at_end": False}
    pretrain(make_config("liger", **steps, **{"model.liger_kernel": "on"}))
    assert len(calls) == 1 and calls[0]["model"].config.model_type == "llama"
    assert calls[0]["rope_calls"] > 0  # the stage trained with the patched RoPE
    assert modeling_llama.apply_rotary_pos_emb is before


def test_liger_on_stops_a_cpu_run_before_the_model_is_built(make_config, monkeypatch):
    from megatron_bliss.engine import trainer
    from megatron_bliss.errors import ConfigError
    from megatron_bliss.models import loading

    monkeypatch.setattr(loading, "build_training_model", pytest.fail)
    with pytest.raises(ConfigError, match=r"model\.liger_kernel=on: .*llama family only"):
        trainer.pretrain(make_config("cpu", **{"model.liger_kernel": "on"}))
