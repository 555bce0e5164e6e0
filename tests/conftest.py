"""Shared fixtures: experiment configs composed by Hydra from the real conf/ tree."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.common import FAST_OVERRIDES
from fedcore.api import compose
from tests.processes import kill_leftovers
from tests.rvstack import CACHE, REPO, set_up

FAST = FAST_OVERRIDES
#: FAST without federated evaluation, which a private run must turn off.
PRIVATE_FAST = (*FAST, "evaluation.federated_clients=0")


#: The experiment config `fedcore sim` would see for these overrides (hydra section removed).
composed = compose


def repeatable_run(run_dir: Path, *overrides: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Simulate `overrides` twice, into run_dir/a and run_dir/b, which must end on the same
    model bit for bit; the first's summary and ledger entries."""
    from fedcore.server.ledger import read_ledger
    from fedcore.server.simulation import simulate

    config = composed(*overrides)
    first = simulate(config, run_dir / "a", overrides)
    again = simulate(config, run_dir / "b", overrides)
    assert first["model_sha256"] == again["model_sha256"], "a seeded run did not repeat"
    return first, read_ledger(run_dir / "a" / "ledger.jsonl")


def fails_at_start(overrides: list[str], message: str) -> None:
    """Building the experiment that `overrides` compose is refused with `message` (a regex)."""
    from fedcore.server.experiment import make_experiment
    from fedcore.typed_config import ConfigError

    with pytest.raises((ConfigError, ValueError), match=message):
        make_experiment(composed(*overrides))


@pytest.fixture
def fast_config() -> dict[str, Any]:
    """A small synthetic experiment that runs in about a second."""
    return composed(*FAST)


@pytest.fixture(scope="session")
def rv_python() -> Path:
    """The python of a venv with the RISC-V client's stack (grpcio 1.51.1, protobuf 4.21.12)."""
    venv = CACHE / "rvstack"
    set_up(["bash", str(REPO / "scripts" / "rv_stack_venv.sh"), str(venv)], "rv-stack venv")
    return venv / "bin" / "python"


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """A test that fails half-way through a deployment leaves no server or client running."""
    yield
    kill_leftovers()
