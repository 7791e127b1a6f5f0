"""Named model shapes (Pythia suite, LLaMA-0.5B, tiny CPU models) as transformers configs.

Every dimension is written out explicitly, so an exported checkpoint never depends on a
transformers default that might change (the usual source of exports that load but emit gibberish).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import GPTNeoXConfig, LlamaConfig, PretrainedConfig

from megatron_bliss.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

PYTHIA_VOCAB = 50304  # GPT-NeoX tokenizer (50,277 ids) padded to a multiple of 128


@dataclass(frozen=True)
class Preset:
    family: str  # "pythia" (GPT-NeoX) or "llama"
    num_layers: int
    hidden_size: int
    num_heads: int
    vocab_size: int
    max_positions: int = 2048
    intermediate_size: int | None = None  # default: 4 * hidden (Pythia)
    num_kv_heads: int | None = None  # LLaMA grouped-query attention

    def ffn_size(self) -> int:
        return self.intermediate_size or 4 * self.hidden_size


PRESETS: dict[str, Preset] = {
    # Pythia's published shapes (Biderman et al. 2023, Table 1).
    "pythia-14m": Preset("pythia", 6, 128, 4, PYTHIA_VOCAB),
    "pythia-31m": Preset("pythia", 6, 256, 8, PYTHIA_VOCAB),
    "pythia-70m": Preset("pythia", 6, 512, 8, PYTHIA_VOCAB),
    "pythia-160m": Preset("pythia", 12, 768, 12, PYTHIA_VOCAB),
    "pythia-410m": Preset("pythia", 24, 1024, 16, PYTHIA_VOCAB),
    "pythia-1b": Preset("pythia", 16, 2048, 8, PYTHIA_VOCAB),
    "pythia-2.8b": Preset("pythia", 32, 2560, 32, PYTHIA_VOCAB),
    # LLaMA-0.5B: 16 layers x 1536, 12 heads of 128, 4 KV heads, SwiGLU 4096, 32k sentencepiece
    # vocabulary, untied embeddings: 0.50 B parameters (0.40 B without embeddings).
    "llama-0.5b": Preset("llama", 16, 1536, 12, 32000, intermediate_size=4096, num_kv_heads=4),
    # Tiny CPU presets for tests, the demo and proxies; vocab is set from the tokenizer.
    "pythia-tiny": Preset("pythia", 2, 64, 4, 512, max_positions=512),
    "pythia-tiny-128": Preset("pythia", 2, 128, 4, 4096, max_positions=512),
    "llama-tiny": Preset(
        "llama", 2, 64, 4, 512, max_positions=512, intermediate_size=176, num_kv_heads=2
    ),
}


def padded_vocab_size(vocab_size: int, multiple: int = 128) -> int:
    """Round a tokenizer's size up so embedding matrices stay GEMM-friendly (Pythia: 50277 -> 50304)."""
    return ((vocab_size + multiple - 1) // multiple) * multiple


MODEL_TYPE_FAMILY = {"gpt_neox": "pythia", "llama": "llama"}  # transformers' model_type -> family


def model_family(config: PretrainedConfig) -> str:
    """The preset family of a loaded model's config (``gpt_neox`` -> pythia, ``llama``)."""
    model_type = getattr(config, "model_type", "")
    if model_type not in MODEL_TYPE_FAMILY:
        raise InputError(
            f"unsupported target model type '{model_type}' (expected gpt_neox or llama)"
        )
    return MODEL_TYPE_FAMILY[model_type]


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset '{name}' (known: {', '.join(PRESETS)})")
    return PRESETS[name]


def build_config(
    name: str,
    vocab_size: int | None = None,
    max_positions: int | None = None,
    attn_implementation: str | None = None,
) -> PretrainedConfig:
    """A transformers config for preset ``name``; ``vocab_size`` overrides the preset's own."""
    preset = get_preset(name)
    vocab = vocab_size or preset.vocab_size
    positions = max_positions or preset.max_positions
    if preset.family == "pythia":
        config = GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=preset.hidden_size,
            num_hidden_layers=preset.num_layers,
            num_attention_heads=preset.num_heads,
            intermediate_size=preset.ffn_size(),
            hidden_act="gelu",
            max_position_embeddings=positions,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.25,
            },
            layer_norm_eps=1e-5,
            use_parallel_residual=True,
            tie_word_embeddings=False,
            attention_bias=True,
            initializer_range=0.02,
            bos_token_id=0,
            eos_token_id=0,
            use_cache=False,
        )
    else:
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=preset.hidden_size,
            intermediate_size=preset.ffn_size(),
            num_hidden_layers=preset.num_layers,
            num_attention_heads=preset.num_heads,
            num_key_value_heads=preset.num_kv_heads or preset.num_heads,
            head_dim=preset.hidden_size // preset.num_heads,
            hidden_act="silu",
            max_position_embeddings=positions,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=False,
            attention_bias=False,
            mlp_bias=False,
            initializer_range=0.02,
            bos_token_id=1,
            eos_token_id=2,
            use_cache=False,
        )
    config._attn_implementation = attn_implementation or default_attention()
    return config


def default_attention() -> str:
    """flash-attn 2 on a GPU when installed, SDPA otherwise."""
    if torch.cuda.is_available():
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def build_model(
    name: str,
    vocab_size: int | None = None,
    max_positions: int | None = None,
    attn_implementation: str | None = None,
) -> torch.nn.Module:
    """A freshly initialised causal LM for preset ``name`` (call under ``zero.Init`` for ZeRO-3)."""
    from transformers import AutoModelForCausalLM

    config = build_config(name, vocab_size, max_positions, attn_implementation)
    logger.info("model %s: attention %s", name, config._attn_implementation)
    return AutoModelForCausalLM.from_config(config, attn_implementation=config._attn_implementation)


def count_parameters(config: PretrainedConfig, include_embeddings: bool = True) -> int:
    """Parameter count from the config alone (works for ZeRO-3-partitioned models too)."""
    hidden, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    ffn = config.intermediate_size
    if config.model_type == "gpt_neox":
        per_layer = 4 * hidden * hidden + 4 * hidden + 2 * hidden * ffn + ffn + hidden + 4 * hidden
        final = 2 * hidden
    else:
        head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
        kv = config.num_key_value_heads * head_dim
        per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * ffn + 2 * hidden
        final = hidden
    embeddings = vocab * hidden * (1 if config.tie_word_embeddings else 2)
    return layers * per_layer + final + (embeddings if include_embeddings else 0)
