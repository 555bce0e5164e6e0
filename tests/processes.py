"""Helpers for tests that run `fedcore server` and `fedcore client` as real processes."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fedcore.certs import certs_main
from fedcore.clients.main import client_arguments

#: Every process started here; `kill_leftovers` ends those a failed test left running.
STARTED: list[subprocess.Popen[str]] = []


def spawn(
    command: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start `command` with stdout and stderr merged into one text pipe (killed if left over)."""
    process = subprocess.Popen(
        command, cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    STARTED.append(process)
    return process


def run_fedcore(
    *args: str, cwd: Path | None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run `python -m fedcore.cli ARGS` to its end; its exit status is the caller's to check."""
    return subprocess.run(
        [sys.executable, "-m", "fedcore.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def fedcore(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start `python -m fedcore.cli ARGS`."""
    return spawn([sys.executable, "-m", "fedcore.cli", *args], cwd, env)


#: The environment of processes that load plug-ins from this repository's `tests.plugins`.
PLUGIN_ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


#: A two-client federation on synthetic data, listening on a free port (tests add rounds=N).
TWO_CLIENTS = (
    "dataset=synthetic",
    "model=mlp",
    "num_clients=2",
    "clients_per_round=2",
    "training.local_steps=3",
    "output.progress=off",
    "deployment.address=127.0.0.1:0",
)


def start_server(
    root: Path, *overrides: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """`fedcore server OVERRIDES` with the certificates under root/certs and its run directory at
    root/run."""
    return fedcore(
        "server",
        *overrides,
        f"deployment.certs={root / 'certs' / 'server'}",
        f"hydra.run.dir={root / 'run'}",
        cwd=root,
        env=env,
    )


def finish_federation(
    server: subprocess.Popen[str],
    clients: list[subprocess.Popen[str]],
    accepted: int | None = None,
    timeout: float = 240,
) -> list[str]:
    """Wait for the clients, then the server: each must exit 0, and each client must report
    `accepted` updates accepted when that is given (and have printed a line for each). Their
    outputs, clients first."""
    outputs = [process.communicate(timeout=timeout)[0] for process in clients]
    outputs.append(server.communicate(timeout=60)[0])
    for process, output in zip([*clients, server], outputs, strict=True):
        assert process.returncode == 0, output
    if accepted is not None:
        for output in outputs[:-1]:
            assert f"done, {accepted} updates accepted" in output, output
            per_task = re.findall(r": trained from version \d+: .*; accepted$", output, re.M)
            assert len(per_task) == accepted, output
    return outputs


def client_args(root: Path, port: int, number: int) -> list[str]:
    """`fedcore client` arguments for client-`number` of the test federation under `root`."""
    return client_arguments(
        f"127.0.0.1:{port}",
        f"client-{number}",
        root / "certs",
        root / "run" / "config.yaml",
        "localhost",
    )


def kill_leftovers() -> None:
    """Kill processes started by `fedcore` that are still running (after a failed test)."""
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.communicate()


def server_port(server: subprocess.Popen[str]) -> int:
    """Read the server's output until it announces its port."""
    assert server.stdout is not None
    deadline = time.monotonic() + 60
    for line in server.stdout:
        found = re.search(r"listening on port (\d+)", line)
        if found:
            return int(found.group(1))
        assert time.monotonic() < deadline, "server did not start"
    raise AssertionError(f"server exited with {server.wait()}")


def free_port() -> int:
    """A loopback port nobody listens on now (for a server that must restart on the same one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_certs(root: Path, clients: int) -> Path:
    """A CA, a `localhost` server certificate and clients client-0..client-N-1 under root/certs."""
    certs = root / "certs"
    code = certs_main(
        ["init", "--dir", str(certs), "--server-name", "localhost", "--clients", str(clients)]
    )
    assert code == 0
    return certs


def client(
    root: Path, port: int, number: int, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """`fedcore client` number `number` with the run's config, against localhost:`port`."""
    return fedcore("client", *client_args(root, port, number), *extra, cwd=root, env=env)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` every 50 ms until it holds; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
