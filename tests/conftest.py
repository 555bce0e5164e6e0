"""Shared fixtures: experiment configs composed by Hydra from the real conf/ tree."""

from __future__ import annotations

from typing import Any

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

FAST = [
    "dataset=synthetic",
    "model=mlp",
    "num_clients=20",
    "clients_per_round=5",
    "rounds=3",
    "training.local_steps=5",
    "output.progress=off",
    "evaluation.federated_clients=5",
]


def composed(*overrides: str) -> dict[str, Any]:
    """The experiment config `fedcore sim` would see for these overrides (hydra section removed)."""
    with initialize_config_module(config_module="fedcore.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    data.pop("hydra", None)
    return {str(k): v for k, v in data.items()}


@pytest.fixture
def fast_config() -> dict[str, Any]:
    """A small synthetic experiment that runs in about a second."""
    return composed(*FAST)
