"""Reproducible installs: constraints.txt pins what the suite passes with, and a DeepSpeed outside
the range the checkpoint workarounds were tested with stops ``pretrain`` with one line."""

from __future__ import annotations

import re
from importlib import metadata

import pytest
from packaging.version import Version

from megatron_bliss.config import ConfigError
from megatron_bliss.engine.versions import OVERRIDE, TESTED_DEEPSPEED, check_deepspeed_version
from megatron_bliss.utils.paths import REPO_ROOT


def pins() -> dict[str, str]:
    lines = (REPO_ROOT / "constraints.txt").read_text().splitlines()
    found = [re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)$", line) for line in lines]
    return {m.group(1).lower().replace("_", "-"): m.group(2) for m in found if m}


def test_installed_deepspeed_is_the_tested_one():
    check_deepspeed_version()  # fails loudly here when an upgrade outruns the workarounds
    low, high = map(Version, TESTED_DEEPSPEED)
    assert low <= Version(pins()["deepspeed"]) <= high


@pytest.mark.parametrize("version", ["0.19.7", "0.20.0"])
def test_untested_deepspeed_stops_with_one_line(version, monkeypatch):
    monkeypatch.delenv(OVERRIDE, raising=False)
    with pytest.raises(ConfigError, match=f"deepspeed {version} is installed") as stopped:
        check_deepspeed_version(version)
    assert "\n" not in str(stopped.value) and "constraints.txt" in str(stopped.value)
    monkeypatch.setenv(OVERRIDE, "1")
    check_deepspeed_version(version)


def test_constraints_pin_every_requirement_at_the_installed_version():
    pinned = pins()
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        name = re.match(r"^([A-Za-z0-9_.\-]+)", line.split("#")[0].strip())
        if not name:
            continue
        key = name.group(1).lower().replace("_", "-")
        assert key in pinned, f"{key} is not pinned in constraints.txt"
        assert metadata.version(key).split("+")[0] == pinned[key], key
    assert pinned["torch"] == metadata.version("torch").split("+")[0]
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in makefile and "megatron_bliss.engine.versions" in makefile
