"""Turn plain nested dicts (from YAML, Hydra or JSON) into typed dataclasses, or say exactly why not.

Errors name the dotted key path: `partition.alpha: must be > 0, got -1.0`. Dataclasses check
their own value constraints in `__post_init__` by raising ValueError; the path is added here.
No Hydra import: clients on minimal stacks use this too.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
from collections.abc import Iterable
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type, or impossible; the message names the key."""


def build(cls: type[T], data: Any, path: str = "") -> T:
    """An instance of dataclass `cls` from a mapping, checking keys, types and values."""
    return _convert(cls, data, path)


def _where(path: str) -> str:
    return path or "<root>"


def _convert(kind: Any, value: Any, path: str) -> Any:
    origin = get_origin(kind)
    if kind is Any:
        return value
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        return _dataclass(kind, value, path)
    if origin is Literal:
        options = get_args(kind)
        if value not in options:
            raise ConfigError(f"{_where(path)}: must be one of {list(options)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        arms = get_args(kind)
        if value is None and type(None) in arms:
            return None
        errors = []
        for arm in arms:
            if arm is type(None):
                continue
            try:
                return _convert(arm, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{_where(path)}: {value!r} fits none of {arms}"
        )
    if origin is list:
        (item,) = get_args(kind) or (Any,)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{_where(path)}: expected a list, got {value!r}")
        return [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = get_args(kind) or (str, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{_where(path)}: expected a mapping, got {value!r}")
        return {str(k): _convert(item, v, f"{path}.{k}") for k, v in value.items()}
    return _scalar(kind, value, path)


def _scalar(kind: Any, value: Any, path: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"{_where(path)}: unsupported config type {kind!r}")
    raise ConfigError(f"{_where(path)}: expected {kind.__name__}, got {value!r}")


def _dataclass(cls: type, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(value) and isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ConfigError(
            f"{_where(path)}: expected a mapping of {cls.__name__} options, got {value!r}"
        )
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise ConfigError(unknown_key(path, unknown[0], fields))
    kwargs = {
        name: _convert(hints[name], raw, f"{path}.{name}" if path else name)
        for name, raw in value.items()
    }
    try:
        return cls(**kwargs)
    except ValueError as exc:
        message = str(exc)
        field, _, reason = message.partition(": ")
        if re.split(r"[.\[]", field, maxsplit=1)[0] in fields and reason:
            raise ConfigError(f"{path + '.' if path else ''}{message}") from None
        raise ConfigError(f"{_where(path)}: {message}") from None


def unknown_key(path: str, name: str, known: Iterable[str]) -> str:
    """The error line for key `name` under `path`, which is none of `known`: the closest known
    key as a suggestion when one is close, and the known keys."""
    known = sorted(known)
    key = f"{path}.{name}" if path else name
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {(path + '.' if path else '') + close[0]}?" if close else ""
    return f"{key}: unknown key{hint} (known keys: {', '.join(known)})"


def require(condition: bool, field: str, rule: str, value: Any) -> None:
    """Raise `ValueError("field: rule, got value")` unless condition holds (for __post_init__)."""
    if not condition:
        raise ValueError(f"{field}: {rule}, got {value!r}")


def require_positive(field: str, value: float, note: str = "") -> None:
    """`require` that `value` is finite and > 0 (`note` follows the rule in the message)."""
    require(math.isfinite(value) and value > 0, field, f"must be finite and > 0{note}", value)
