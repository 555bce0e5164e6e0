"""A flood against a live server: an enrolled client re-joining in a loop with a 3.5 MB device
name, and a CA-signed but unenrolled certificate uploading with a 3.9 MB claimed id. The ledger
grows by a bounded number of short entries, and every call is still accounted for (written, or
counted in a `suppressed` entry)."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import grpc
import pytest

from fedcore.certs import certs_main
from fedcore.proto import coordinator_pb2 as pb
from fedcore.proto import coordinator_pb2_grpc as pb_grpc
from fedcore.server.ledger import SOURCE_BURST, SOURCE_PERIOD, read_ledger
from tests.processes import server_port, spawn

pytestmark = pytest.mark.slow

FLOOD_SECONDS = 3.0
#: Every string a client sends is capped before it is stored, so no entry exceeds this.
MAX_ENTRY_BYTES = 8 << 10


def _channel(port: int, certs: Path, client: str) -> grpc.Channel:
    key = (certs / "clients" / f"{client}.key").read_bytes()
    chain = (certs / "clients" / f"{client}.pem").read_bytes()
    credentials = grpc.ssl_channel_credentials((certs / "ca.pem").read_bytes(), key, chain)
    return grpc.secure_channel(
        f"127.0.0.1:{port}",
        credentials,
        options=[
            ("grpc.ssl_target_name_override", "localhost"),
            ("grpc.max_send_message_length", 8 << 20),
        ],
    )


def test_a_flood_of_joins_and_refusals_writes_a_bounded_ledger(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    init = ["init", "--dir", str(certs), "--server-name", "localhost", "--clients", "2"]
    assert certs_main(init) == 0
    assert certs_main(["add-client", "--dir", str(certs), "--client", "intruder"]) == 0
    (certs / "server" / "enrolled.txt").write_text("client-0\nclient-1\n")
    server = spawn(
        [
            *(sys.executable, "-m", "fedcore.cli", "server", "dataset=synthetic", "model=logreg"),
            *("num_clients=2", "clients_per_round=2", "rounds=10", "output.progress=off"),
            "deployment.address=127.0.0.1:0",
            f"deployment.certs={certs / 'server'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        tmp_path,
    )
    port = server_port(server)
    ledger = tmp_path / "run" / "ledger.jsonl"
    before = ledger.stat().st_size
    flooder = pb_grpc.CoordinatorStub(_channel(port, certs, "client-1"))
    intruder = pb_grpc.CoordinatorStub(_channel(port, certs, "intruder"))
    device_name = "d" * 3_500_000
    claimed_id = "i" * 3_900_000
    joins = refusals = 0
    start = time.monotonic()
    while time.monotonic() - start < FLOOD_SECONDS:
        profile = pb.DeviceProfile(device_name=device_name)
        flooder.Join(pb.JoinRequest(client_id="client-1", profile=profile), timeout=10)
        joins += 1
        header = pb.UploadHeader(client_id=claimed_id, task_id="none")
        with pytest.raises(grpc.RpcError) as refused:
            intruder.UploadUpdate(iter([pb.UploadChunk(header=header)]), timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        refusals += 1
    seconds = time.monotonic() - start
    server.send_signal(signal.SIGINT)
    server.communicate(timeout=60)

    assert joins >= 2 * SOURCE_BURST and refusals >= 2 * SOURCE_BURST, (joins, refusals)
    entries_allowed = 2 * (SOURCE_BURST + seconds / SOURCE_PERIOD + 1)
    grown = ledger.stat().st_size - before
    assert grown <= entries_allowed * MAX_ENTRY_BYTES, grown
    entries = read_ledger(ledger)
    assert max(len(json.dumps(e)) for e in entries) <= MAX_ENTRY_BYTES

    def accounted(event: str, source: str) -> int:
        """Entries of `event` written plus those suppressed (one source provokes each here)."""
        written = sum(e["event"] == event for e in entries)
        suppressed = sum(
            e["counts"].get(event, 0)
            for e in entries
            if e["event"] == "suppressed" and e["source"] == source
        )
        return written + suppressed

    assert accounted("join", "client-1") == joins
    assert accounted("refused", "intruder") == refusals
