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


#: The experiment config `fedcore sim` would see for these overrides (hydra section removed).
composed = compose


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
