"""Which device a command runs on: one rule for training, selection, scoring and evaluation.

``auto`` (or nothing) is this rank's GPU, ``cuda:LOCAL_RANK``, when CUDA is visible, else the
CPU; an explicit ``cuda`` without a visible GPU stops at start with one line naming the setting,
instead of failing minutes later inside the first kernel.
"""

from __future__ import annotations

import torch

from megatron_bliss.errors import ConfigError
from megatron_bliss.utils.launcher_env import local_rank


def resolve_device(name: str | torch.device | None = "auto", key: str = "device") -> torch.device:
    """The torch device for setting ``key`` = ``name`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""
    name = str(name) if isinstance(name, torch.device) else name
    cuda = torch.cuda.is_available()
    if name in (None, "", "auto"):
        return torch.device("cuda", local_rank()) if cuda else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}={name}: not a device (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not cuda:
        raise ConfigError(f"{key}={name} but no CUDA device is visible")
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank())
    return device
