"""The RISC-V client's library stack on x86-64: a cached venv from scripts/rv_stack_venv.sh."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(
    os.environ.get("FEDCORE_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedcore"
)
# pip's words when it cannot reach the index (retries on, then off): set-up is skipped then.
NO_NETWORK = (
    "No matching distribution found",
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyError",
)


def set_up(command: list[str], what: str) -> None:
    """Run a set-up command; skip when it failed for want of network, fail otherwise."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.skip(f"{what}: timed out after 300 s (PyPI unreachable?)")
    if done.returncode != 0:
        output = done.stdout + done.stderr
        if any(marker in output for marker in NO_NETWORK):
            last = output.strip().splitlines()[-1]
            pytest.skip(f"{what}: packages unobtainable, no network to the index? ({last})")
        pytest.fail(f"{what} failed ({done.returncode}):\n{output[-3000:]}")
