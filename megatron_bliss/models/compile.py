"""``torch.compile`` of each transformer block (decoder layer), in place.

Each block's ``forward`` becomes the compiled ``forward`` of its class, bound to the block (a
copy of the model rebinds it to the copy). The module is not wrapped, so the module tree,
parameter names and state-dict keys stay those of the eager model (no ``_orig_mod.`` prefix):
checkpoints, resume, ``export-hf`` and layer-name lookups such as ``checkpoint.adam_state_params``
are unchanged. Every block runs the same code, so one graph is compiled and reused by all of them
(compile time does not grow with depth).

Only ``forward`` is compiled, not the module call (``nn.Module.compile()`` compiles
``_call_impl`` and with it the module's hooks): the block's own hooks (ZeRO-3's parameter fetch
and release, activation checkpointing) run eagerly around the graph. Under ZeRO-3 the blocks are
also made ZeRO-3 leaf modules (``engine/trainer.py``), so no ZeRO hook runs inside a block.
Measured on the tiny CPU model under ZeRO-3: one graph and no graph break this way, against 11
graphs, 31 breaks and dynamo's recompile limit with ``nn.Module.compile()`` and DeepSpeed's
per-layer hooks.
"""

from __future__ import annotations

import types

import torch

BLOCKS = {"gpt_neox": "gpt_neox.layers", "llama": "model.layers"}
"""transformers' ``model_type`` -> the ModuleList of its decoder layers."""


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers of a GPT-NeoX (Pythia) or LLaMA causal LM, in order."""
    model_type = getattr(model.config, "model_type", "")
    if model_type not in BLOCKS:
        raise ValueError(f"no transformer blocks known for model_type {model_type!r}")
    return list(model.get_submodule(BLOCKS[model_type]))


def compile_blocks(model: torch.nn.Module, **options) -> int:
    """Compile every transformer block's ``forward`` in place (``options`` go to
    ``torch.compile``); returns how many were compiled."""
    blocks = transformer_blocks(model)
    compiled = {}  # one compiled function per block class, shared by its blocks
    for block in blocks:
        cls = type(block)
        if cls not in compiled:
            compiled[cls] = torch.compile(cls.forward, **options)
        block.forward = types.MethodType(compiled[cls], block)
    return len(blocks)


def is_compiled(block: torch.nn.Module) -> bool:
    """Whether ``compile_blocks`` compiled this block."""
    forward = vars(block).get("forward")
    return hasattr(getattr(forward, "__func__", None), "_torchdynamo_orig_callable")
