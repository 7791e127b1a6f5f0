"""A crafted checkpoint runs no code: every way a checkpoint path is read (export-hf, select
--target-model, checkpoint.load / resume, the universal conversion and its repair) refuses a
pickle that asks for anything but DeepSpeed's own types, in one line naming the file; the
documented opt-in (--trust-checkpoint, checkpoint.trust) really switches to the full unpickler."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from megatron_bliss.cli import main
from megatron_bliss.engine import checkpoint as ckpt
from megatron_bliss.engine.checkpoint_integrity import write_completion_record
from megatron_bliss.engine.config import load_pretrain_config
from megatron_bliss.engine.distributed import DistributedContext
from megatron_bliss.engine.safe_load import UntrustedCheckpoint, checkpoint_reading
from megatron_bliss.engine.trainer import pretrain
from megatron_bliss.utils.paths import REPO_ROOT
from tests.engine.conftest import tiny_overrides

MODEL_STATES = "zero_pp_rank_0_mp_rank_00_model_states.pt"
OPTIM_STATES = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


class Payload:
    """Unpickling this with the full unpickler writes ``marker``: code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.fixture
def crafted(trained, tmp_path):
    """The real step-4 checkpoint with its model states replaced by a payload; its completion
    record is rewritten to match, as whoever crafted it would."""
    checkpoints = tmp_path / "crafted" / "checkpoints"
    shutil.copytree(trained / "checkpoints", checkpoints)
    step = checkpoints / "global_step4"
    marker = tmp_path / "ran"
    torch.save({"module": Payload(marker)}, step / MODEL_STATES)
    write_completion_record(step, 4)
    return step, marker


def assert_refused(message: str, step, marker) -> None:
    assert len(message.strip().splitlines()) == 1
    assert f"{step / MODEL_STATES}: refused: it needs exec" in message
    assert "--trust-checkpoint" in message
    assert not marker.exists()


def test_real_checkpoints_load_weights_only(trained):
    step = trained / "checkpoints" / "global_step4"
    with checkpoint_reading():
        for path in sorted(step.glob("*.pt")):
            torch.load(path, weights_only=False)  # forced to weights-only, allow-listed types


def test_fp16_loss_scaler_state_loads_weights_only(tmp_path):
    """fp16 runs (GPU only) store a DynamicLossScaler where bf16/fp32 store a LossScaler."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler

    scaler = DynamicLossScaler(2.0**16, 1000, 1.0, 2, False, dtype=torch.float16)
    torch.save({"loss_scaler": scaler, "dynamic_loss_scale": True}, tmp_path / "optim.pt")
    with checkpoint_reading():
        loaded = torch.load(tmp_path / "optim.pt", weights_only=False)["loss_scaler"]
    assert loaded.cur_scale == 2.0**16 and loaded.dtype == torch.float16


def test_export_hf_refuses_unless_trusted(crafted, tmp_path, capsys):
    step, marker = crafted
    argv = ["export-hf", "--checkpoint", str(step.parent), "--output", str(tmp_path / "hf")]
    assert main(argv) == 2
    assert_refused(capsys.readouterr().err, step, marker)
    assert not (tmp_path / "hf").exists()
    with pytest.raises(ValueError):  # the full unpickler: the payload runs, DeepSpeed then fails
        main([*argv, "--trust-checkpoint"])
    assert marker.read_text() == "ran"


def test_select_target_model_refuses_unless_trusted(crafted, tmp_path, tiny_shard, capsys):
    step, marker = crafted
    config = str(REPO_ROOT / "configs" / "select_tiny_cpu.yaml")
    argv = ["select", "--method", "perplexity", "--config", config, "--data-prefix", tiny_shard,
            "--target-model", str(step), "--run-dir", str(tmp_path / "sel"), "seq_length=32"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()  # INFO lines, then the error
    assert_refused(err[-1], step, marker)
    with pytest.raises(ValueError):  # DeepSpeed's own error about what the payload left
        main([*argv, "--trust-checkpoint"])
    assert marker.read_text() == "ran"


def test_checkpoint_load_refuses_unless_trusted(crafted, tiny_shard, tokenizer_dir, tmp_path):
    step, marker = crafted

    def config(**extra):
        values = {"train.train_steps": 6, "checkpoint.load": str(step.parent), **extra}
        overrides = tiny_overrides(tiny_shard, tokenizer_dir, tmp_path / "resumed", **values)
        return load_pretrain_config(None, overrides)

    with pytest.raises(UntrustedCheckpoint) as refused:
        pretrain(config())
    assert_refused(str(refused.value), step, marker)
    with pytest.raises(Exception):  # noqa: B017 (whatever the payload leaves DeepSpeed)
        pretrain(config(**{"checkpoint.trust": True}))
    assert marker.read_text() == "ran"


def test_universal_conversion_and_repair_refuse(crafted, tmp_path):
    step, marker = crafted
    with pytest.raises(UntrustedCheckpoint) as refused:
        ckpt.convert_to_universal(step.parent, step.name, DistributedContext())
    assert_refused(str(refused.value), step, marker)
    assert not (step.parent / ckpt.universal_tag(step.name)).exists()

    universal = tmp_path / "global_step4_universal"
    (universal / "zero").mkdir(parents=True)
    torch.save({"param_groups": [Payload(marker)]}, universal / "zero" / "optimizer_state.pt")
    with pytest.raises(UntrustedCheckpoint, match=r"optimizer_state\.pt: refused"):
        ckpt.repair_universal_optimizer_state(None, universal)
    assert not marker.exists()


def test_the_allow_list_is_recorded_in_the_readme():
    readme = (REPO_ROOT / "README.md").read_text()
    from megatron_bliss.engine.safe_load import deepspeed_globals

    for cls in deepspeed_globals():
        assert cls.__name__ in readme
    assert json.dumps("--trust-checkpoint").strip('"') in readme
