"""Reading a settings file (YAML, TOML or JSON) into a mapping, with one-line errors that name
the file: the one reader of `lrmil tile --config` and `lrmil distill --config`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lrmil.errors import ConfigError

SUFFIXES = (".yaml", ".yml", ".toml", ".json")


def read_settings(path: str | Path) -> dict[str, Any]:
    """The file's settings as a (nested) dict; ConfigError naming the file if it is missing,
    not UTF-8, not parseable, or not a mapping."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"config file {path}: use .yaml, .yml, .toml or .json")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark (Windows editors) is fine
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} "
                          f"on line {line}); save it as UTF-8") from None
    try:
        data = _toml().loads(text) if suffix == ".toml" else _yaml_load(text)
    except Exception as exc:  # TOMLDecodeError, YAMLError: they carry the line number
        message = " ".join(str(exc).split())
        raise ConfigError(f"config file {path} cannot be parsed: {message}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    return data


def _toml() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    import tomli  # the same parser, packaged for Python 3.10

    return tomli


def _yaml_load(text: str) -> Any:
    import yaml  # JSON is YAML too

    return yaml.safe_load(text)
