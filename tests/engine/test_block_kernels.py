"""What the training stage does to its model's blocks: ``train.compile`` (each block compiled in
place trains like the eager model under ZeRO-3, with blocks as ZeRO-3 leaf modules and the eager
model's state-dict keys)."""

from __future__ import annotations

import numpy as np

from megatron_bliss.engine.hooks import Hooks
from megatron_bliss.engine.trainer import pretrain
from megatron_bliss.models.compile import is_compiled


def inspector(seen: dict) -> Hooks:
    def inspect(engine):
        layers = engine.module.gpt_neox.layers
        seen["compiled"] = [is_compiled(layer) for layer in layers]
        seen["leaf"] = [getattr(layer, "_z3_leaf", False) for layer in layers]
        seen["keys"] = list(engine.module.state_dict())

    return Hooks(on_engine_final=inspect)


def test_compiled_blocks_train_with_the_eager_losses(make_config):
    import torch._dynamo
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    steps = {"deepspeed.zero_stage": 3, "train.train_steps": 3}
    plain, seen = {}, {}
    eager = pretrain(make_config("eager", **steps), inspector(plain))
    torch._dynamo.reset()
    counters.clear()
    with inductor_config.patch(compile_threads=1):  # no compile workers on a shared CPU
        config = make_config("compiled", **steps, **{"train.compile": True})
        compiled = pretrain(config, inspector(seen))
    assert plain["compiled"] == plain["leaf"] == [False, False]
    assert seen["compiled"] == seen["leaf"] == [True, True]
    assert seen["keys"] == plain["keys"]
    # One graph shared by both blocks, and no ZeRO hook traced into it.
    assert counters["stats"]["unique_graphs"] == 1
    assert sum(counters["graph_break"].values()) == 0
    np.testing.assert_allclose(compiled["losses"], eager["losses"], rtol=1e-4)
