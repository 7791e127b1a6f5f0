"""Config loading: typos get a suggestion, and errors caused by an override name that override."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from megatron_bliss.config import ConfigError, load_config


@dataclass
class Train:
    train_steps: int = 10
    lr: float = 1e-3


@dataclass
class Root:
    run_dir: str = "runs/x"
    train: Train = field(default_factory=Train)


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run_dir: runs/y\ntrain:\n  lr: 0.01\n")
    return path


def test_overrides_replace_leaves(config_file):
    config = load_config(Root, config_file, ["train.train_steps=3"])
    assert config.train.train_steps == 3 and config.train.lr == 0.01 and config.run_dir == "runs/y"


@pytest.mark.parametrize(
    ("override", "expected"),
    [("train.train_stpes=3", "unknown key 'train_stpes' (did you mean 'train_steps'?"),
     ("trian.lr=1", "unknown key 'trian' (did you mean 'train'?"),
     ("train.train_steps=abc", "train.train_steps: expected an integer, got 'abc'")],
)  # fmt: skip
def test_override_error_names_the_override(config_file, override, expected):
    with pytest.raises(ConfigError) as error:
        load_config(Root, config_file, [override])
    message = str(error.value)
    assert expected in message and message.endswith(f"(from the override '{override}')")
    assert "\n" not in message


def test_error_in_the_file_does_not_blame_an_override(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  bogus: 1\n")
    with pytest.raises(ConfigError) as error:
        load_config(Root, path, ["train.lr=0.5"])
    assert "unknown key 'bogus'" in str(error.value) and "override" not in str(error.value)
