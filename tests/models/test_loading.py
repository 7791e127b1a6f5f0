"""Model building for training: seeded initial weights, ZeRO-3 parity, presets' shapes."""

from __future__ import annotations

import torch

from megatron_bliss.engine.config import ModelConfig
from megatron_bliss.models.loading import build_training_model, model_from_state_dict
from megatron_bliss.models.presets import build_config, count_parameters


def test_seeded_initialisation_is_reproducible_and_seed_dependent():
    config = ModelConfig(preset="llama-tiny")
    first = build_training_model(config, vocab_size=128, seed=7, ds_config=None).state_dict()
    again = build_training_model(config, vocab_size=128, seed=7, ds_config=None).state_dict()
    other = build_training_model(config, vocab_size=128, seed=8, ds_config=None).state_dict()
    assert first.keys() == again.keys()
    for name, tensor in first.items():
        torch.testing.assert_close(tensor, again[name], rtol=0, atol=0)
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(first[weight], other[weight])
    assert abs(float(first[weight].std()) - 0.02) < 0.004  # transformers' initializer_range


def test_model_from_state_dict_round_trip_keeps_every_dimension():
    model = build_training_model(ModelConfig(preset="pythia-tiny"), 512, 0, None)
    rebuilt = model_from_state_dict(model.config.to_dict(), model.state_dict())
    assert rebuilt.config.vocab_size == 512
    assert rebuilt.config.rope_parameters["partial_rotary_factor"] == 0.25
    probe = torch.arange(24).reshape(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(
            rebuilt(input_ids=probe).logits, model.eval()(input_ids=probe).logits
        )


def test_pythia_parameter_counts_match_published_sizes():
    expected = {"pythia-160m": 162_322_944, "pythia-410m": 405_334_016, "pythia-1b": 1_011_781_632}
    for name, count in expected.items():
        assert count_parameters(build_config(name)) == count
