"""liger-kernel's fused RMSNorm, SwiGLU and RoPE for the LLaMA family (``model.liger_kernel``).

``auto`` (default) applies them on CUDA to a llama model when ``liger_kernel`` imports, and skips
otherwise with one info line; ``on`` requires them and stops with one line when they cannot be
applied; ``off`` never does. liger's loss kernels stay off: the engine has its own fused
linear+cross-entropy (``train.loss_kernel``).

``apply_liger_kernel_to_llama(model=...)`` patches the model's modules in place and also swaps
``apply_rotary_pos_emb``, ``LlamaRMSNorm`` and ``LlamaMLP`` in transformers' ``modeling_llama``
for the whole process (RoPE has no per-instance patch). ``apply_liger`` returns a function that
puts those back, so models built after the training stage (a selector's proxy, which needs double
backward that liger's Triton kernels lack) are plain transformers again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from megatron_bliss.errors import ConfigError

logger = logging.getLogger(__name__)

CHOICES = ("auto", "on", "off")
PATCHED_GLOBALS = ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP")
"""What liger replaces in ``transformers.models.llama.modeling_llama`` process-wide."""


def model_type(model_config) -> str:
    """transformers' ``model_type`` a ``ModelConfig`` will build, without building it: its
    ``init_from`` checkpoint's, else its preset's."""
    if model_config.init_from:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model_config.init_from).model_type
    from megatron_bliss.models.presets import get_preset

    return "llama" if get_preset(model_config.preset).family == "llama" else "gpt_neox"


def liger_import_error() -> str | None:
    """Why ``liger_kernel.transformers`` cannot be imported, or None when it can."""
    try:
        import liger_kernel.transformers  # noqa: F401
    except Exception as error:  # ImportError, or a Triton/torch mismatch at import
        return f"liger_kernel does not import ({type(error).__name__}: {error})"
    return None


def unsupported_reason(model_type: str, device_type: str) -> str | None:
    """Why liger's kernels cannot run for this model and device, or None when they can."""
    if model_type != "llama":
        return f"liger-kernel is applied to the llama family only (this model is {model_type})"
    if device_type != "cuda":
        return f"liger-kernel's Triton kernels need CUDA (this run is on {device_type})"
    return liger_import_error()


def use_liger(setting: str, model_type: str, device_type: str) -> bool:
    """The ``model.liger_kernel`` decision: True to apply; a ``ConfigError`` when ``on`` cannot
    be honoured; ``auto`` that cannot apply logs why, once, and returns False."""
    if setting not in CHOICES:
        raise ConfigError(f"model.liger_kernel={setting!r} (choose from {', '.join(CHOICES)})")
    if setting == "off":
        return False
    reason = unsupported_reason(model_type, device_type)
    if reason is None:
        return True
    if setting == "on":
        raise ConfigError(f"model.liger_kernel=on: {reason}; set model.liger_kernel=auto or off")
    logger.info("liger-kernel not applied: %s", reason)
    return False


def apply_liger(model: torch.nn.Module) -> Callable[[], None]:
    """Apply liger's RMSNorm, SwiGLU and RoPE to a llama ``model`` (not its losses); returns the
    function that restores transformers' ``modeling_llama`` globals."""
    from liger_kernel.transformers import apply_liger_kernel_to_llama
    from transformers.models.llama import modeling_llama

    saved = {name: getattr(modeling_llama, name) for name in PATCHED_GLOBALS}
    apply_liger_kernel_to_llama(
        rope=True,
        rms_norm=True,
        swiglu=True,
        cross_entropy=False,
        fused_linear_cross_entropy=False,
        model=model,
    )
    logger.info("liger-kernel: fused RMSNorm, SwiGLU and RoPE applied")

    def restore() -> None:
        for name, value in saved.items():
            setattr(modeling_llama, name, value)

    return restore
