"""The entry point: every subcommand has --help; a user error ends in one line with exit code 2,
anything else keeps its traceback."""

from __future__ import annotations

import pytest

from megatron_bliss import cli
from megatron_bliss.errors import ConfigError, InputError, MissingFileError


@pytest.mark.parametrize("command", list(cli.SUBCOMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    assert command in capsys.readouterr().out


@pytest.mark.parametrize(
    "error",
    [ConfigError("cfg.yaml: unknown key 'x'"), InputError("x.jsonl:3: bad line"),
     MissingFileError("out/x.bin: not found")],
)  # fmt: skip
def test_user_errors_are_one_line(monkeypatch, capsys, error):
    import megatron_bliss.eval.report as report

    def fail(args):
        raise error

    monkeypatch.setattr(report, "run", fail)
    assert cli.main(["report", "anything"]) == 2
    message = capsys.readouterr().err.strip()
    assert message == f"megatron-bliss report: error: {error}"


@pytest.mark.parametrize(
    "error", [ValueError("an internal invariant broke"), PermissionError("out/x: denied")]
)
def test_other_errors_keep_their_traceback(monkeypatch, capsys, error):
    import megatron_bliss.eval.report as report

    def fail(args):
        raise error

    monkeypatch.setattr(report, "run", fail)
    with pytest.raises(type(error)):
        cli.main(["report", "anything"])
    assert "error:" not in capsys.readouterr().err
