"""Checks `fedcore sim` and `fedcore server` overrides against the typed config and the
packaged presets before Hydra composes them, so a typo (`rouns=5`, `strategy=fedamdd`) is one
line that names the closest key or preset instead of Hydra's multi-line advice."""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from fedcore.config import ExperimentConfig
from fedcore.typed_config import ConfigError, unknown_key

#: Sweep values this check reads: names separated by commas (Hydra's other sweep syntax is
#: left to Hydra).
PLAIN_CHOICES = re.compile(r"[\w\-]+(,[\w\-]+)*")


def presets(group: str) -> list[str]:
    """The preset names of config group `group` (its YAML files)."""
    return sorted(path.stem for path in (_conf_dir() / group).glob("*.yaml"))


def _conf_dir() -> Path:
    """The packaged config groups (`conf/`): one directory of YAML presets each."""
    import fedcore.conf

    return Path(fedcore.conf.__file__).resolve().parent


def _groups() -> list[str]:
    return sorted(p.name for p in _conf_dir().iterdir() if p.is_dir() and any(p.glob("*.yaml")))


def check_overrides(arguments: list[str]) -> None:
    """Raise ConfigError for the first override whose key the config does not have or whose
    preset does not exist. Flags, Hydra's own keys and free-form mappings are not checked."""
    groups = _groups()
    strategies = (
        _chosen(arguments, "strategy.name")
        or _chosen(arguments, "strategy")
        or [_default_preset("strategy")]
    )
    for argument in arguments:
        if argument.startswith("-") or "=" not in argument:
            continue
        key, _, value = argument.partition("=")
        key = key.lstrip("+~")
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):
            continue
        if key in groups:
            _check_presets(key, value)
        else:
            _check_key(key.split("."), strategies)


def _chosen(arguments: list[str], key: str) -> list[str]:
    """The values the arguments give `key` (a sweep may give several)."""
    for argument in arguments:
        name, _, value = argument.partition("=")
        if name.lstrip("+") == key and PLAIN_CHOICES.fullmatch(value):
            return value.split(",")
    return []


def _default_preset(group: str) -> str:
    """The preset of `group` that the packaged config's defaults list chooses."""
    config = yaml.safe_load((_conf_dir() / "config.yaml").read_text(encoding="utf-8"))
    return next(
        entry[group] for entry in config["defaults"] if isinstance(entry, dict) and group in entry
    )


def _check_presets(group: str, value: str) -> None:
    if not PLAIN_CHOICES.fullmatch(value):
        return
    known = presets(group)
    for name in value.split(","):
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {group}={close[0]}?" if close else ""
            raise ConfigError(f"{group}: no preset {name!r}{hint} (presets: {', '.join(known)})")


def _check_key(parts: list[str], strategies: list[str]) -> None:
    kind: Any = ExperimentConfig
    for depth, part in enumerate(parts):
        path = ".".join(parts[:depth])
        if path == "strategy":
            _check_strategy_key(part, strategies)
            return
        if not (dataclasses.is_dataclass(kind) and isinstance(kind, type)):
            return  # a free-form mapping or list: its entries are checked when it is built
        fields = {f.name for f in dataclasses.fields(kind) if f.init}
        if part not in fields:
            raise ConfigError(unknown_key(path, part, fields))
        kind = get_type_hints(kind)[part]


def _check_strategy_key(part: str, strategies: list[str]) -> None:
    """A strategy option must belong to the chosen strategy's options (to each, in a sweep)."""
    from fedcore.strategies.registry import STRATEGIES

    for name in strategies:
        if name not in STRATEGIES:
            return  # a plug-in strategy, registered only once the config's plug-ins load
        config_type, _ = STRATEGIES[name]
        fields = {f.name for f in dataclasses.fields(config_type) if f.init} | {"name"}
        if part not in fields:
            raise ConfigError(unknown_key("strategy", part, fields))
