"""The ZeRO-3 tuning knobs change speed, never the numbers: ``ds_configs/gpu_zero3_tuned.json``
(stage-3 prefetch, persistence, live-parameter and reuse limits, overlap, buckets) and
``deepspeed.zero3_leaf_blocks`` train with the losses of the CPU ZeRO-3 config (checked on CPU,
fp32; the JSON's bf16 follows train.precision)."""

from __future__ import annotations

import numpy as np

from megatron_bliss.engine.hooks import Hooks
from megatron_bliss.engine.trainer import pretrain


def test_tuned_zero3_config_and_leaf_blocks_train_like_the_default(make_config):
    steps = {"train.train_steps": 3, "checkpoint.save_at_end": False}
    default = pretrain(make_config("default", **steps))
    seen = {}

    def inspect(engine):
        seen["zero"] = engine.zero_optimization_stage()
        seen["prefetch"] = engine.zero_prefetch_bucket_size()
        seen["leaf"] = [
            getattr(layer, "_z3_leaf", False) for layer in engine.module.gpt_neox.layers
        ]

    tuned = pretrain(
        make_config(
            "tuned",
            **steps,
            **{
                "deepspeed.config": "ds_configs/gpu_zero3_tuned.json",
                "deepspeed.zero3_leaf_blocks": True,
            },
        ),
        Hooks(on_engine_final=inspect),
    )
    assert seen == {"zero": 3, "prefetch": 500_000_000, "leaf": [True, True]}
    np.testing.assert_allclose(tuned["losses"], default["losses"], rtol=1e-6)
