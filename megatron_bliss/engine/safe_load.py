"""Reading checkpoint files without running code from them.

A ``.pt`` file is a pickle, and the full unpickler runs whatever a crafted file asks for before
any check of its contents. DeepSpeed reads its shards with ``torch.load(..., weights_only=False)``
at some forty call sites (the engine's resume, ``zero_to_fp32`` for export, ``ds_to_universal``
for elastic resume), so ``checkpoint_reading()`` turns every ``torch.load`` made inside it into a
``weights_only=True`` load that accepts torch's tensor types plus ``DEEPSPEED_GLOBALS``, the few
classes DeepSpeed's shards contain, and refuses anything else with one line naming the file.

``DEEPSPEED_GLOBALS`` was read from ZeRO-0/1/2/3 checkpoints in fp32 and bf16 and from their
universal conversions (DeepSpeed 0.19.8, ``engine.versions``); ``DynamicLossScaler`` is what fp16
runs store in place of ``LossScaler``. They are plain data holders: unpickling one sets
attributes and runs none of its methods.

``trust=True`` (``--trust-checkpoint``, ``checkpoint.trust``) leaves ``torch.load`` alone, i.e.
DeepSpeed's full unpickler, for checkpoints whose origin you trust and that hold other types. A
command-line flag applies to everything the command loads through ``trusting()``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import pickle
import re
from collections.abc import Iterator

import torch

from megatron_bliss.errors import InputError

TRUST_HINT = (
    "checkpoints load without running code; if you trust this file's origin, pass "
    "--trust-checkpoint (config: checkpoint.trust=true)"
)
_TRUSTED = contextvars.ContextVar("megatron_bliss_trust_checkpoint", default=False)


class UntrustedCheckpoint(InputError):
    """A checkpoint file that needs the full unpickler; the message names the file."""


def deepspeed_globals() -> list[type]:
    """The non-torch classes DeepSpeed pickles into model and optimizer state files."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


@contextlib.contextmanager
def trusting(trust: bool) -> Iterator[None]:
    """Within the block, ``checkpoint_reading()`` without an explicit ``trust`` uses ``trust``
    (how a command's ``--trust-checkpoint`` reaches loaders it does not call directly)."""
    token = _TRUSTED.set(bool(trust))
    try:
        yield
    finally:
        _TRUSTED.reset(token)


@contextlib.contextmanager
def checkpoint_reading(trust: bool | None = None) -> Iterator[None]:
    """Every ``torch.load`` inside the block is weights-only with DeepSpeed's allow-list, unless
    ``trust`` (default: the enclosing ``trusting()`` setting, else False)."""
    if _TRUSTED.get() if trust is None else trust:
        yield
        return
    original = torch.load
    allowed = deepspeed_globals()

    @functools.wraps(original)
    def weights_only_load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        kwargs.pop("pickle_module", None)
        try:
            with torch.serialization.safe_globals(allowed):
                return original(f, *args, **kwargs)
        except pickle.UnpicklingError as error:
            raise UntrustedCheckpoint(f"{f}: refused: {_refusal(error)}; {TRUST_HINT}") from None

    torch.load = weights_only_load
    try:
        yield
    finally:
        torch.load = original


def load_file(path, trust: bool | None = None, **kwargs):
    """``torch.load(path)`` for one checkpoint file, under ``checkpoint_reading(trust)``."""
    with checkpoint_reading(trust):
        return torch.load(path, **kwargs)


def _refusal(error: pickle.UnpicklingError) -> str:
    """What the weights-only unpickler objected to, in a few words (torch's text is a page)."""
    text = str(error)
    found = re.search(r"GLOBAL (\S+) was not an allowed global", text)
    if found:
        return f"it needs {found.group(1)}, not one of the types DeepSpeed checkpoints hold"
    detail = text.split("WeightsUnpickler error:")[-1].strip().splitlines()
    return f"not a weights-only pickle ({detail[0] if detail else 'unsupported content'})"
