"""Typed dataclass configuration loaded from YAML with ``section.key=value`` overrides.

Every command keeps one source of truth: a dataclass tree with defaults that run. YAML files and
command-line overrides only replace leaves, and unknown keys or wrongly typed values stop the run
at start with one line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from megatron_bliss.errors import ConfigError  # raised here; importable from here as before

T = TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming ``where``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, where)
    if origin in (list, tuple):
        if value is None:
            raise ConfigError(f"{where}: expected a list, got null")
        if not isinstance(value, list | tuple):
            value = [value]
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            number = float(value)
        except ValueError as error:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from error
        if number != int(number):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(number)
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from error
    if annotation is str:
        if isinstance(value, dict | list):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys are errors, missing keys keep defaults."""
    hints = _field_types(cls)
    check_known_keys(data, [f.name for f in dataclasses.fields(cls) if f.init], where)
    kwargs = {key: _coerce(value, hints[key], f"{where}.{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: {error}") from None


def check_known_keys(data: dict[str, Any], names, where: str) -> None:
    """One line for the first key of ``data`` that is not in ``names``, with the closest one."""
    names = sorted(set(names))
    unknown = sorted(set(data) - set(names))
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' ({hint}known: {', '.join(names)})")


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-3", "seed=2"]`` -> nested dict; values are parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value")
        key, raw = item.split("=", 1)
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return nested


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``, or from the shipped file of that name (``configs/...``)."""
    from megatron_bliss.utils.paths import resolve_shipped

    try:
        with open(resolve_shipped(path)) as handle:
            data = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"{path}{line}: invalid YAML ({getattr(error, 'problem', error)})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    ignore: tuple[str, ...] = (),
) -> T:
    """Defaults of ``cls``, then the YAML file, then ``key=value`` overrides; top-level sections
    named in ``ignore`` belong to another reader of the same file and are left out."""
    data: dict[str, Any] = read_yaml(path) if path else {}
    data = merge(data, parse_overrides(overrides or []))
    data = {key: value for key, value in data.items() if key not in ignore}
    try:
        return from_dict(cls, data, where=str(path) if path else "config")
    except ConfigError as error:
        raise naming_override(error, overrides) from None


def naming_override(error: ConfigError, overrides: list[str] | None) -> ConfigError:
    """``error`` with the command-line override it is about appended, if any: messages name the
    YAML file, so without this a typo typed on the command line reads as if it were in the file."""
    message = str(error)
    for item in overrides or []:
        key = item.split("=", 1)[0].strip()
        named = any(f"unknown key '{part}'" in message for part in key.split("."))
        if f".{key}:" in message or named:
            return ConfigError(f"{message} (from the override '{item}')")
    return error


def dump_yaml(config: Any, path: str | Path) -> None:
    """Write the fully resolved config (atomically) so every run directory records what ran."""
    from megatron_bliss.utils.io import atomic_write_text

    text = yaml.safe_dump(to_dict(config), sort_keys=False)
    atomic_write_text(path, text)


def config_hash(config: Any) -> str:
    """Stable short hash of a config (or any JSON-able value), used to key cached stage outputs."""
    payload = to_dict(config) if dataclasses.is_dataclass(config) else config
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
