"""`fedcore certs revoke` takes effect on a running server within a heartbeat: the revoked
client is refused and ends with one line, its task is lost, training goes on with the others, and
the run still resumes from its checkpoints."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fedcore.certs import certs_main
from fedcore.server.ledger import read_ledger
from tests.processes import client, fedcore, free_port, make_certs, wait_for

pytestmark = pytest.mark.slow


def _server(root: Path, port: int):
    return fedcore(
        "server",
        "dataset=synthetic",
        "model=logreg",
        "num_clients=2",
        "clients_per_round=1",
        "rounds=12",
        "training.local_steps=3",
        "output.progress=off",
        "evaluation.federated_clients=0",
        f"deployment.address=127.0.0.1:{port}",
        "deployment.heartbeat_seconds=0.5",
        "deployment.liveness_timeout=30",  # not under test: load must not trip it
        f"deployment.certs={root / 'certs' / 'server'}",
        f"hydra.run.dir={root / 'run'}",
        cwd=root,
    )


def test_a_revoked_client_is_refused_within_a_heartbeat_and_the_run_resumes(tmp_path: Path):
    make_certs(tmp_path, 2)
    port = free_port()
    server = _server(tmp_path, port)
    ledger = tmp_path / "run" / "ledger.jsonl"
    wait_for(lambda: (tmp_path / "run" / "config.yaml").exists(), 60, "the run directory")
    honest = client(tmp_path, port, 0, "--slow", "0.3")
    revoked = client(tmp_path, port, 1, "--slow", "0.3")
    wait_for(
        lambda: ledger.exists() and sum(e["event"] == "model" for e in read_ledger(ledger)) >= 2,
        120,
        "model version 2",
    )
    assert certs_main(["revoke", "--dir", str(tmp_path / "certs"), "--client", "client-1"]) == 0
    revoked_at = time.monotonic()
    output = revoked.communicate(timeout=60)[0]
    assert revoked.returncode == 1 and "client 'client-1' is revoked" in output, output
    assert time.monotonic() - revoked_at < 15, "refused within a long-poll, not at the end"
    wait_for(
        lambda: any(e["event"] == "revoked" for e in read_ledger(ledger)), 10, "the revocation"
    )

    server.kill()
    server.communicate(timeout=30)
    server = _server(tmp_path, port)
    outputs = [honest.communicate(timeout=240)[0], server.communicate(timeout=120)[0]]
    assert server.returncode == 0 and honest.returncode == 0, outputs
    assert "resuming" in outputs[1], outputs[1]
    written = read_ledger(ledger)  # as written, entries the resume voided included
    (revocation,) = [e for e in written if e["event"] == "revoked"]
    assert revocation["name"] == "client-1"
    after = written[written.index(revocation) :]
    assert {e["client"] for e in after if e["event"] == "accepted"} == {0}
    effective = read_ledger(ledger, effective=True)
    assert [e["version"] for e in effective if e["event"] == "model"] == list(range(1, 13))
