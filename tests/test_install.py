"""A non-editable install works on its own: the package built from this tree and installed into a
fresh folder runs ``megatron-bliss`` from another directory, with the configs and DeepSpeed
configs it ships (package data), not with files of the checkout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from megatron_bliss.utils.paths import REPO_ROOT
from tests.child_env import child_env

PROJECT_FILES = ("pyproject.toml", "README.md", "megatron_bliss", "configs", "ds_configs")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(install folder, environment that imports the package from it, a directory elsewhere)."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in PROJECT_FILES:
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    target = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    shutil.rmtree(source)  # nothing of the tree is left to fall back on
    env = child_env(PYTHONPATH=str(target))
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return target, env, elsewhere


def run(installed, *argv: str) -> subprocess.CompletedProcess:
    target, env, elsewhere = installed
    return subprocess.run(
        [str(target / "bin" / "megatron-bliss"), *argv],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_installed_package_is_the_one_imported(installed):
    target, env, elsewhere = installed
    probe = (
        "import json, megatron_bliss; from megatron_bliss.utils.paths import resolve_shipped; "
        "print(json.dumps([megatron_bliss.__file__, str(resolve_shipped('ds_configs/cpu_zero3.json')),"
        " str(resolve_shipped('configs/pretrain_tiny_cpu.yaml'))]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    for path in json.loads(done.stdout):
        assert path.startswith(str(target)), path


def test_installed_commands_run_with_the_shipped_configs(installed, tmp_path):
    for command in ("demo", "pretrain", "pipeline"):
        done = run(installed, command, "--help")
        assert done.returncode == 0 and command in done.stdout, done.stderr
    done = run(
        installed, "pretrain", "--config", "configs/pretrain_tiny_cpu.yaml", "--dry-run",
        f"run_dir={tmp_path / 'run'}", "data.prefix=unused",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["world_size"] == 1
