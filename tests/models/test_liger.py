"""``model.liger_kernel``: when liger-kernel is applied, when ``on`` stops with one line, and that
the process-wide patches it makes are undone when the training stage closes. liger-kernel itself
is not needed: a stand-in module records the call and patches like liger does."""

from __future__ import annotations

import logging

import pytest

from megatron_bliss.engine.config import ModelConfig
from megatron_bliss.errors import ConfigError
from megatron_bliss.models import liger
from megatron_bliss.models.liger import apply_liger, model_type, use_liger
from tests.models.liger_stub import install_fake_liger


@pytest.fixture
def importable(monkeypatch):
    """liger_kernel imports (whether or not it is installed)."""
    monkeypatch.setattr(liger, "liger_import_error", lambda: None)


@pytest.fixture
def not_installed(monkeypatch):
    monkeypatch.setattr(liger, "liger_import_error", lambda: "liger_kernel does not import")


def test_auto_applies_on_cuda_to_llama_when_importable(importable):
    assert use_liger("auto", "llama", "cuda") is True
    assert use_liger("on", "llama", "cuda") is True
    assert use_liger("off", "llama", "cuda") is False


@pytest.mark.parametrize(
    ("model", "device", "reason"),
    [
        ("gpt_neox", "cuda", "llama family only"),
        ("llama", "cpu", "need CUDA"),
    ],
)
def test_auto_skips_with_one_info_line_and_on_stops(importable, caplog, model, device, reason):
    with caplog.at_level(logging.INFO, logger="megatron_bliss.models.liger"):
        assert use_liger("auto", model, device) is False
    assert len(caplog.records) == 1 and reason in caplog.text
    with pytest.raises(ConfigError, match=rf"^model\.liger_kernel=on: .*{reason}"):
        use_liger("on", model, device)


def test_not_installed_is_skipped_by_auto_and_stops_on(not_installed):
    assert use_liger("auto", "llama", "cuda") is False
    with pytest.raises(ConfigError, match="liger_kernel does not import"):
        use_liger("on", "llama", "cuda")
    with pytest.raises(ConfigError, match="choose from auto, on, off"):
        use_liger("yes", "llama", "cuda")


def test_model_type_comes_from_the_preset_or_the_init_checkpoint(tmp_path):
    assert model_type(ModelConfig(preset="pythia-tiny")) == "gpt_neox"
    assert model_type(ModelConfig(preset="llama-0.5b")) == "llama"
    from megatron_bliss.models.presets import build_config

    build_config("llama-tiny", 128).save_pretrained(tmp_path)
    assert model_type(ModelConfig(preset="pythia-tiny", init_from=str(tmp_path))) == "llama"


@pytest.fixture
def fake_liger(monkeypatch):
    return install_fake_liger(monkeypatch)


def test_apply_asks_for_norm_swiglu_rope_only_and_restores_the_globals(fake_liger):
    from transformers.models.llama import modeling_llama

    originals = {name: getattr(modeling_llama, name) for name in liger.PATCHED_GLOBALS}
    model = object()
    restore = apply_liger(model)
    assert fake_liger == [
        {
            "rope": True,
            "rms_norm": True,
            "swiglu": True,
            "cross_entropy": False,
            "fused_linear_cross_entropy": False,
            "model": model,
            "rope_calls": 0,
        }
    ]
    assert modeling_llama.LlamaRMSNorm.__name__ == "LigerLlamaRMSNorm"
    restore()
    assert {name: getattr(modeling_llama, name) for name in liger.PATCHED_GLOBALS} == originals


def test_the_key_reads_yaml_on_and_off_and_rejects_other_values(tmp_path):
    from megatron_bliss.engine.config import load_pretrain_config

    def setting(value):
        overrides = [f"run_dir={tmp_path}", "data.prefix=x", f"model.liger_kernel={value}"]
        return load_pretrain_config(None, overrides).model.liger_kernel

    assert [setting(v) for v in ("on", "off", "auto", "true")] == ["on", "off", "auto", "on"]
    with pytest.raises(ConfigError, match=r"model\.liger_kernel='maybe' \(choose from auto"):
        setting("maybe")
