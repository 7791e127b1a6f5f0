"""export-hf: a wrong --checkpoint or --output stops with one line and deletes nothing."""

from __future__ import annotations

import pytest

from megatron_bliss.cli import main
from megatron_bliss.engine.export import export_hf


def run_export(checkpoint, output, capsys) -> tuple[int, str]:
    code = main(["export-hf", "--checkpoint", str(checkpoint), "--output", str(output)])
    return code, capsys.readouterr().err.strip()


def test_folder_that_is_not_a_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    code, err = run_export(tmp_path, tmp_path / "hf", capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "not a DeepSpeed checkpoint" in err and str(tmp_path) in err
    assert not (tmp_path / "hf").exists()


def test_output_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "out").write_text("keep me")
    code, err = run_export(tmp_path / "checkpoints", tmp_path / "out", capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "is not a directory" in err
    assert (tmp_path / "out").read_text() == "keep me"


def test_output_that_is_some_other_directory_is_never_replaced(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="not a Hugging Face model"):
        export_hf(run_dir / "checkpoints", run_dir)  # --output RUN_DIR by mistake
    assert (run_dir / "metrics.jsonl").exists()


def test_bad_tokenizer_fails_before_the_weights_are_read(tmp_path, capsys):
    import torch

    from megatron_bliss.engine.checkpoint_integrity import write_completion_record

    step = tmp_path / "checkpoints" / "global_step2"
    step.mkdir(parents=True)
    (step / "meta.json").write_text("{}")
    torch.save({}, step / "mp_rank_00_model_states.pt")  # complete, but holds no weights
    write_completion_record(step, 2)
    (step.parent / "latest").write_text("global_step2")
    code, err = run_export(step.parent, tmp_path / "hf", capsys)
    assert code == 2 and err.endswith(
        "meta.json: no model_config (not a checkpoint written by megatron-bliss pretrain)"
    )
    (step / "meta.json").write_text('{"model_config": {}}')  # no weights: reading them would fail
    write_completion_record(step, 2)
    argv = ["export-hf", "--checkpoint", str(step.parent), "--output", str(tmp_path / "hf"),
            "--tokenizer", str(tmp_path / "missing.json")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("missing.json: tokenizer not found") and len(err.splitlines()) == 1
    assert not (tmp_path / "hf").exists() and not (tmp_path / ".hf.tmp").exists()
