"""`fedcore client` on the RISC-V client's library stack (grpcio 1.51.1, protobuf 4.21.12, run from
the source tree with no install) against a server on this machine's newest grpcio/protobuf."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcore.server.ledger import read_ledger
from tests.processes import (
    TWO_CLIENTS,
    client,
    client_args,
    finish_federation,
    make_certs,
    server_port,
    spawn,
    start_server,
)
from tests.rvstack import REPO

pytestmark = pytest.mark.slow


def test_client_on_the_old_stack_trains_with_a_current_client(
    rv_python: Path, tmp_path: Path
) -> None:
    make_certs(tmp_path, 2)
    server = start_server(
        tmp_path,
        *TWO_CLIENTS,
        "rounds=3",
    )
    port = server_port(server)
    old_stack = spawn(
        [
            str(rv_python),
            str(REPO / "scripts" / "riscv" / "source_tree.py"),
            "client",
            *client_args(tmp_path, port, 1),
        ],
        tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )
    finish_federation(server, [client(tmp_path, port, 0), old_stack], accepted=3)

    entries = read_ledger(tmp_path / "run" / "ledger.jsonl")
    libraries = next(e for e in entries if e["event"] == "join" and e["client"] == 1)["profile"][
        "libraries"
    ]
    assert libraries["grpcio"] == "1.51.1" and libraries["protobuf"] == "4.21.12"
    server_grpc = next(e for e in entries if e["event"] == "join" and e["client"] == 0)
    assert server_grpc["profile"]["libraries"]["grpcio"] != "1.51.1"
    assert sum(e["event"] == "accepted" and e["client"] == 1 for e in entries) == 3
    assert [e["version"] for e in entries if e["event"] == "model"] == [1, 2, 3]
