"""Building models for training (seeded, ZeRO-3-partitioned when asked) and loading them back.

Initial weights are a function of the seed only, whatever the ZeRO stage: both paths reseed and run
transformers' own initialisation in the same module order (under ZeRO-3 through transformers'
gather-then-init variant on rank 0), so ZeRO-2 and ZeRO-3 runs start from the same weights.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from megatron_bliss.errors import InputError
from megatron_bliss.models.presets import build_config, default_attention

logger = logging.getLogger(__name__)


def resolve_attention(requested: str) -> str:
    return default_attention() if requested in ("auto", None) else requested


def _reset_init_flags(model: torch.nn.Module) -> None:
    for module in model.modules():
        module._is_hf_initialized = False
    for parameter in model.parameters():
        if hasattr(parameter, "_is_hf_initialized"):
            parameter._is_hf_initialized = False


def _seeded_init(model, seed: int, zero3: bool) -> None:
    torch.manual_seed(seed)
    _reset_init_flags(model)
    if zero3:
        from transformers.integrations.deepspeed import initialize_weights_zero3

        initialize_weights_zero3(model)
    else:
        model.initialize_weights()


def build_training_model(
    model_config, vocab_size: int | None, seed: int, ds_config: dict[str, Any] | None
) -> torch.nn.Module:
    """The model of a ``ModelConfig``; pass ``ds_config`` for ZeRO-3 (built under zero.Init)."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    attention = resolve_attention(model_config.attn_implementation)
    # Keeping this object alive switches transformers' ZeRO-3 construction on; dropped on return
    # so later from_pretrained calls in the same process (selection, eval) are unaffected.
    zero3_switch = HfDeepSpeedConfig(ds_config) if ds_config is not None else None
    try:
        if model_config.init_from:
            model = AutoModelForCausalLM.from_pretrained(
                model_config.init_from,
                attn_implementation=attention,
                dtype=torch.float32,
                trust_remote_code=False,
            )
            _check_init_vocab(model, vocab_size, model_config.init_from)
            return model
        config = build_config(
            model_config.preset, vocab_size, model_config.max_positions, attention
        )
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attention)
        _seeded_init(model, seed, zero3=ds_config is not None)
        return model
    finally:
        del zero3_switch


def _check_init_vocab(model, vocab_size: int | None, source: str) -> None:
    if vocab_size is not None and model.config.vocab_size < vocab_size:
        raise InputError(
            f"{source}: model vocabulary {model.config.vocab_size} is smaller than the "
            f"tokenizer's padded size {vocab_size}"
        )


def is_hf_directory(path: Path) -> bool:
    return (path / "config.json").exists() and (
        any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))
    )


def model_from_state_dict(model_config: dict[str, Any], state_dict: dict[str, torch.Tensor]):
    """A plain (unpartitioned) HF model from a full config dict and a consolidated state dict."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config_dict = dict(model_config)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    attention = config_dict.get("_attn_implementation") or "sdpa"
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attention)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [key for key in missing if not key.endswith("inv_freq")]
    if missing or unexpected:
        raise InputError(
            f"checkpoint does not match its model config: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    return model.float().eval()


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
