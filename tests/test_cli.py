"""The entry point: every subcommand has --help, and bad input ends in one line with exit code 2."""

from __future__ import annotations

import pytest

from megatron_bliss import cli


@pytest.mark.parametrize("command", list(cli.SUBCOMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    assert command in capsys.readouterr().out


@pytest.mark.parametrize(
    "error", [PermissionError("out/x: permission denied"), ValueError("x.jsonl:3: bad line")]
)
def test_errors_are_one_line(monkeypatch, capsys, error):
    import megatron_bliss.eval.report as report

    def fail(args):
        raise error

    monkeypatch.setattr(report, "run", fail)
    assert cli.main(["report", "anything"]) == 2
    message = capsys.readouterr().err.strip()
    assert message == f"megatron-bliss report: error: {error}"
