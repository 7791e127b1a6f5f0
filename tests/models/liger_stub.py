"""A stand-in ``liger_kernel.transformers`` for tests (liger-kernel needs Triton and CUDA)."""

from __future__ import annotations

import sys
import types

from megatron_bliss.models import liger


def install_fake_liger(monkeypatch) -> list[dict]:
    """Put a ``liger_kernel.transformers`` into ``sys.modules`` whose
    ``apply_liger_kernel_to_llama`` records its keyword arguments and, like liger, swaps
    ``modeling_llama``'s RoPE, RMSNorm and MLP for the whole process (with working stand-ins: a
    RoPE that counts its calls into the call's ``rope_calls``, subclasses named ``Liger...``);
    the originals come back when ``monkeypatch`` undoes, whatever the test did. Returns the list
    of recorded calls."""
    from transformers.models.llama import modeling_llama

    calls: list[dict] = []
    rope = modeling_llama.apply_rotary_pos_emb

    def stand_in_rope(*args, **kwargs):
        calls[-1]["rope_calls"] += 1
        return rope(*args, **kwargs)

    def apply_liger_kernel_to_llama(**kwargs):
        calls.append({**kwargs, "rope_calls": 0})
        modeling_llama.apply_rotary_pos_emb = stand_in_rope
        for name in ("LlamaRMSNorm", "LlamaMLP"):
            original = getattr(modeling_llama, name)
            setattr(modeling_llama, name, type(f"Liger{name}", (original,), {}))

    package = types.ModuleType("liger_kernel")
    module = types.ModuleType("liger_kernel.transformers")
    module.apply_liger_kernel_to_llama = apply_liger_kernel_to_llama
    package.transformers = module
    monkeypatch.setitem(sys.modules, "liger_kernel", package)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", module)
    for name in liger.PATCHED_GLOBALS:  # registers the originals for monkeypatch's undo
        monkeypatch.setattr(modeling_llama, name, getattr(modeling_llama, name))
    monkeypatch.setattr(liger, "liger_import_error", lambda: None)
    return calls
