"""Strategy names as configs refer to them, each with its typed options dataclass."""

from __future__ import annotations

from typing import Any

from fedcore.strategies.base import Strategy
from fedcore.strategies.fedamd import FedAMD, FedAMDConfig
from fedcore.strategies.fedasync import FedAsync, FedAsyncConfig
from fedcore.strategies.fedavg import (
    FedAdagradConfig,
    FedAdamConfig,
    FedAvg,
    FedAvgConfig,
    FedAvgMConfig,
    FedYogiConfig,
)
from fedcore.strategies.fedbuff import FedBuff, FedBuffConfig
from fedcore.strategies.fedcompass import FedCompass, FedCompassConfig
from fedcore.strategies.fedlaw import FedLAW, FedLAWConfig
from fedcore.strategies.fedld import FedLD, FedLDConfig
from fedcore.strategies.fedprox import FedProx, FedProxConfig

STRATEGIES: dict[str, tuple[type[Any], type[Strategy]]] = {
    "fedavg": (FedAvgConfig, FedAvg),
    "fedprox": (FedProxConfig, FedProx),
    "fedavgm": (FedAvgMConfig, FedAvg),
    "fedadam": (FedAdamConfig, FedAvg),
    "fedyogi": (FedYogiConfig, FedAvg),
    "fedadagrad": (FedAdagradConfig, FedAvg),
    "fedasync": (FedAsyncConfig, FedAsync),
    "fedbuff": (FedBuffConfig, FedBuff),
    "fedcompass": (FedCompassConfig, FedCompass),
    "fedamd": (FedAMDConfig, FedAMD),
    "fedld": (FedLDConfig, FedLD),
    "fedlaw": (FedLAWConfig, FedLAW),
}


def build_strategy(name: str, options: Any, seed: int) -> Strategy:
    """Instantiate strategy `name` from its (already validated) options dataclass."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {sorted(STRATEGIES)}")
    config_type, strategy_type = STRATEGIES[name]
    if not isinstance(options, config_type):
        raise TypeError(
            f"strategy {name!r} needs {config_type.__name__}, got {type(options).__name__}"
        )
    return strategy_type(options, seed)


def register_strategy(name: str, config_type: type[Any], strategy_type: type[Strategy]) -> None:
    """Make a strategy findable by `name` (a plug-in's registration; names are unique)."""
    existing = STRATEGIES.get(name)
    if existing is not None and existing != (config_type, strategy_type):
        raise ValueError(f"strategy {name!r} is already registered")
    STRATEGIES[name] = (config_type, strategy_type)
