"""User plug-ins: modules named in the `plugins` config key, imported before anything runs so
that the techniques, transforms and strategies they register are found by name. The server, the
simulation's workers and every deployed client import the same list; modules are found on the
Python path and, as with `python -m`, in the current directory."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from pathlib import Path

from fedcore.typed_config import ConfigError


def load_plugins(modules: Iterable[str]) -> None:
    """Import each module; a missing or failing one is a ConfigError naming it."""
    names = list(modules)
    here = str(Path.cwd())
    if names and here not in sys.path and "" not in sys.path:
        sys.path.append(here)
    for index, name in enumerate(names):
        try:
            importlib.import_module(name)
        except Exception as error:
            raise ConfigError(f"plugins[{index}]: cannot import {name!r}: {error}") from None
