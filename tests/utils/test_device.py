"""One device rule for training, selection, scoring and evaluation."""

from __future__ import annotations

import pytest
import torch

from megatron_bliss.errors import ConfigError
from megatron_bliss.utils.device import resolve_device


def test_auto_is_this_ranks_gpu_else_the_cpu(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == resolve_device("auto") == torch.device("cpu")


def test_a_gpu_that_is_not_there_stops_naming_the_setting(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"train\.device=cuda but no CUDA device is visible"):
        resolve_device("cuda", "train.device")
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("gpu0", "--device")
