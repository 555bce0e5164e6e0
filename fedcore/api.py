"""fedcore from Python: compose an experiment from overrides exactly as `fedcore sim` does, run
it, and get its whole history (docs/python-api.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def compose(*overrides: str) -> dict[str, Any]:
    """The experiment config `fedcore sim OVERRIDES` would run, as plain data (without Hydra's
    own section). Unknown keys and presets raise ConfigError, as on the command line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    from fedcore.overrides import check_overrides

    check_overrides(list(overrides))
    with initialize_config_module(config_module="fedcore.conf", version_base="1.3"):
        config = hydra_compose(config_name="config", overrides=list(overrides))
    data = OmegaConf.to_container(config, resolve=True)
    assert isinstance(data, dict)
    data.pop("hydra", None)
    return {str(k): v for k, v in data.items()}


def run(*overrides: str, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Simulate the experiment `overrides` compose; write its run directory when `run_dir` is
    given. Returns its summary (what `summary.json` holds) with `history`: every metrics row,
    one per evaluated model version, oldest first."""
    from fedcore.server.simulation import simulate

    path = Path(run_dir) if run_dir is not None else None
    return simulate(compose(*overrides), path, overrides)
