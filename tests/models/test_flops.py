"""The one FLOPs model: it counts the parameters the model really has, and equal work gives equal
FLOPs whichever part of the project does it (engine training, a selector's training loop)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_bliss.engine.metrics import flops_per_token
from megatron_bliss.models.flops import matmul_parameters, pass_flops
from megatron_bliss.models.presets import build_config, build_model


@pytest.mark.parametrize("preset", ["pythia-tiny", "llama-tiny", "pythia-160m", "llama-0.5b"])
def test_matmul_parameters_are_every_parameter_but_the_input_embedding(preset):
    config = build_config(preset)
    with torch.device("meta"):
        model = build_model(preset, config.vocab_size, 64)
    embedding = model.get_input_embeddings().weight.numel()
    assert matmul_parameters(config) == sum(p.numel() for p in model.parameters()) - embedding


def test_engine_and_selector_count_equal_training_work_equally(tiny_shard):
    from megatron_bliss.data.pool import SequencePool
    from megatron_bliss.selection.base import SelectionContext
    from megatron_bliss.selection.proxy import warmup_lm
    from megatron_bliss.selection.random_selector import RandomSelector

    pool = SequencePool(tiny_shard, 16)
    model = build_model("pythia-tiny", 512, 17)
    selector = RandomSelector(RandomSelector.Config(), SelectionContext(pool=pool, run_dir="."))
    trained = warmup_lm(model, pool, steps=2, batch_size=4, lr=1e-3, seed=0,
                        device=torch.device("cpu"))  # fmt: skip
    selector.spend("training", model, trained * pool.seq_length, "train")
    engine = flops_per_token(model.config, pool.seq_length) * trained * pool.seq_length
    assert selector.flops["training"] == pytest.approx(engine, rel=1e-12)
    forward = pass_flops(model.config, 1000, 16, "forward")
    assert pass_flops(model.config, 1000, 16, "train") == pytest.approx(3 * forward)
    assert np.isclose(pass_flops(model.config, 1000, 16, "fd"), 2 * forward)
