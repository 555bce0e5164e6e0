"""Named registries of client techniques and update transforms (built-ins and plug-ins register
into them by class decorator), and the typed decoding of the parameters a task carries for them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Generic, TypeVar, get_type_hints

from fedcore.typed_config import ConfigError

P = TypeVar("P")
T = TypeVar("T", bound=type)


class TaskError(ConfigError):
    """A task asks for something no client can do (unknown technique or transform, a parameter
    it does not take, or a value of the wrong type or range); the message names the key."""


def decode_params(params_type: type[P], values: Mapping[str, float], where: str) -> P:
    """An instance of dataclass `params_type` from a task's float map: keys must be its fields,
    integers integral, booleans 0 or 1; its `__post_init__` checks the values."""
    hints, fields = _field_types(params_type)
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in fields:
            raise TaskError(
                f"{where}.{key}: unknown parameter (known: {', '.join(sorted(fields)) or 'none'})"
            )
        value = float(raw)
        kind = hints[key]
        if kind is bool:
            if value not in (0.0, 1.0):
                raise TaskError(f"{where}.{key}: must be 0 or 1 (a flag), got {raw!r}")
            kwargs[key] = bool(value)
        elif kind is int:
            if not value.is_integer():
                raise TaskError(f"{where}.{key}: must be an integer, got {raw!r}")
            kwargs[key] = int(value)
        else:
            kwargs[key] = value
    try:
        return params_type(**kwargs)
    except ValueError as error:
        raise TaskError(f"{where}.{error}") from None


#: Resolved field types and field names of each parameters dataclass decoded so far.
_FIELD_TYPES: dict[type, tuple[dict[str, Any], frozenset[str]]] = {}


def _field_types(params_type: type) -> tuple[dict[str, Any], frozenset[str]]:
    """A parameters dataclass's field types and names, worked out once per class (every task
    is decoded at dispatch and when it runs: resolving string annotations each time dominated)."""
    known = _FIELD_TYPES.get(params_type)
    if known is None:
        names = frozenset(f.name for f in dataclasses.fields(params_type))
        known = _FIELD_TYPES[params_type] = (get_type_hints(params_type), names)
    return known


class Registry(Generic[T]):
    """Classes with a `name` attribute, findable by it; names are unique."""

    def __init__(self, what: str, key: str) -> None:
        self.what, self.key = what, key
        self.entries: dict[str, T] = {}

    def register(self, cls: T) -> T:
        """Class decorator: make `cls` findable by its `name`."""
        name: str = cls.name  # type: ignore[attr-defined]
        existing = self.entries.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"{self.what} {name!r} is already registered by {existing}")
        self.entries[name] = cls
        return cls

    def get(self, name: str) -> T:
        """The class registered as `name`, or TaskError naming the key and the known names."""
        if name not in self.entries:
            raise TaskError(
                f"{self.key}: unknown {self.what} {name!r}; known: {sorted(self.entries)}"
            )
        return self.entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self.entries
