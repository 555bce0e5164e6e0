"""User plug-ins: modules named in the `plugins` config key, imported before anything runs so
that the techniques, transforms and strategies they register are found by name. The server, the
simulation's workers and every deployed client import the same list."""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from fedcore.typed_config import ConfigError


def load_plugins(modules: Iterable[str]) -> None:
    """Import each module; a missing or failing one is a ConfigError naming it."""
    for index, name in enumerate(modules):
        try:
            importlib.import_module(name)
        except Exception as error:
            raise ConfigError(f"plugins[{index}]: cannot import {name!r}: {error}") from None
