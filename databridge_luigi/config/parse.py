"""Reading one config file: safe YAML that refuses a key written twice, syntax and encoding errors as
``ConfigProblem``s with line and column, and pydantic's errors turned into a key and a readable reason
(an unknown key gets a "did you mean" hint).
"""
from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from .model import ConfigError, ConfigProblem
from .options import DatasetFile

MAX_CONFIG_BYTES = 64 * 1024  # a dataset config is a few hundred bytes; a runaway file is refused before parsing


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key written twice (YAML would silently keep the last value)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _inside(path: Path, directory: Path) -> bool:
    """Whether ``path``, symlinks resolved, lies inside ``directory`` (resolved too)."""
    try:
        path.resolve().relative_to(directory.resolve())
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "-"
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([ConfigProblem(str(path), at, f"YAML syntax error: {reason}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigProblem(str(path), "-", "file is not UTF-8 text")]) from None
    if raw is None:
        raise ConfigError([ConfigProblem(str(path), "-", "file is empty")])
    if not isinstance(raw, dict):
        raise ConfigError([ConfigProblem(str(path), "-", f"must be a mapping of keys, got {type(raw).__name__}")])
    return raw


def _problem(path: str, error: dict[str, Any]) -> ConfigProblem:
    key = ".".join(str(part) for part in error["loc"]) or "-"
    if error["type"] == "extra_forbidden":
        field_name = str(error["loc"][-1])
        model = DatasetFile
        for part in error["loc"][:-1]:
            annotation = model.model_fields.get(str(part))
            model = annotation.annotation if annotation else model  # type: ignore[assignment]
            # An optional block (``X | None``): look inside for the model.
            model = next((a for a in typing.get_args(model) if isinstance(a, type) and issubclass(a, BaseModel)), model)  # type: ignore[assignment]
        names = [f.alias or n for n, f in model.model_fields.items()] if isinstance(model, type) and issubclass(model, BaseModel) else []
        close = difflib.get_close_matches(field_name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return ConfigProblem(path, key, f"unknown key{hint}")
    message = error["msg"].removeprefix("Value error, ")
    return ConfigProblem(path, key, message)
