"""1,000 idle TCP connections that never start TLS, held open for the whole run against a
server started under the usual 1,024 open-file soft limit, do not lock out honest clients: the
server raises its limit and keeps descriptors back for its own files."""

from __future__ import annotations

import resource
import socket
import sys
from pathlib import Path

import pytest

from tests.processes import client, finish_federation, free_port, make_certs, spawn

pytestmark = pytest.mark.slow

IDLE_CONNECTIONS = 1000


def test_a_thousand_idle_connections_do_not_lock_out_honest_clients(tmp_path: Path) -> None:
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 4 * IDLE_CONNECTIONS:
        pytest.skip("needs a hard open-file limit of at least 4,000 for both ends")
    make_certs(tmp_path, 2)
    port = free_port()
    server = spawn(
        [
            "bash",
            "-c",
            'ulimit -Sn 1024 && exec "$0" "$@"',
            sys.executable,
            "-m",
            "fedcore.cli",
            "server",
            "dataset=synthetic",
            "model=logreg",
            "num_clients=2",
            "clients_per_round=2",
            "rounds=3",
            "output.progress=plain",
            "output.plot=false",
            "evaluation.federated_clients=0",
            f"deployment.address=127.0.0.1:{port}",
            "deployment.handshake_timeout=300",  # only the descriptor budget protects here
            f"deployment.certs={tmp_path / 'certs' / 'server'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        tmp_path,
    )
    assert server.stdout is not None
    for line in server.stdout:
        if "listening on port" in line:
            break
    idle = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        clients = [client(tmp_path, port, i) for i in range(2)]
        finish_federation(server, clients, accepted=3, timeout=120)
    finally:
        for connection in idle:
            connection.close()
