"""FedAMD deployed: `fedcore server` and three client processes over mutual TLS for three rounds
(anchors, miners carrying the direction as a task extra, anchors), checked against the
simulation of the same config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from fedcore.server.experiment import make_experiment
from fedcore.server.ledger import read_ledger
from fedcore.server.rundir import read_model_file
from fedcore.server.simulation import Simulation
from fedcore.strategies.fedamd import FedAMD
from tests.processes import (
    client,
    finish_federation,
    make_certs,
    server_port,
    start_server,
    wait_for,
)

pytestmark = pytest.mark.slow

CLIENTS = 3
SERVER_ARGS = [
    "dataset=synthetic",
    "model=mlp",
    f"num_clients={CLIENTS}",
    f"clients_per_round={CLIENTS}",
    "rounds=3",
    "training.local_steps=5",
    "strategy=fedamd",
    "strategy.anchor_period=2",
    "strategy.anchor_batch=100",
    "output.progress=plain",
    "output.plot=false",
    "evaluation.federated_clients=0",
    "deployment.address=127.0.0.1:0",
    "deployment.heartbeat_seconds=0.5",
    "deployment.liveness_timeout=30",  # liveness is not under test: load must not trip it
]


@pytest.fixture(scope="module")
def federation_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One server and three clients, run to completion; returns the server's run directory."""
    root = tmp_path_factory.mktemp("deploy-fedamd")
    make_certs(root, CLIENTS)
    server = start_server(root, *SERVER_ARGS)
    port = server_port(server)
    finish_federation(server, [client(root, port, i) for i in range(CLIENTS)], accepted=3)
    return root / "run"


def test_fedamd_rounds_over_mutual_tls_accept_every_anchor_and_miner(federation_run: Path) -> None:
    entries = read_ledger(federation_run / "ledger.jsonl")
    assert sum(e["event"] == "accepted" for e in entries) == 3 * CLIENTS
    assert not [e for e in entries if e["event"] in ("rejected", "refused", "lost")]
    assert [e["version"] for e in entries if e["event"] == "model"] == [1, 2, 3]


def test_deployed_fedamd_reaches_the_simulation_model(
    federation_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round 1's anchors leave the model unchanged; round 2's miners start from the mean anchor
    gradient, which reaches them only as a task extra over gRPC (without it they would run plain
    SGD); round 3's anchors leave it unchanged again."""
    config = yaml.safe_load((federation_run / "config.yaml").read_text())
    experiment = make_experiment(config)
    simulated = Simulation(experiment, config).run().final
    deployed, _ = read_model_file(federation_run / "model.fct", experiment.layout)
    assert not torch.equal(deployed, experiment.initial_model().params)
    assert torch.allclose(deployed, simulated.params, atol=1e-6, rtol=0)

    monkeypatch.setattr(FedAMD, "direction", lambda self: None)
    undirected = Simulation(make_experiment(config), config).run().final
    assert not torch.allclose(deployed, undirected.params, atol=1e-4), "the direction matters"


def test_a_client_restarted_with_its_state_file_keeps_its_anchor_gradients(tmp_path: Path) -> None:
    """Client-kept gradient store: client-1 is killed after its first anchor was counted and
    restarted with the same `--state`; its next anchor upload is relative to the counted one,
    which only the state file still holds, and is accepted."""
    make_certs(tmp_path, 2)
    server = start_server(
        tmp_path,
        *[a for a in SERVER_ARGS if not a.startswith(("num_clients", "clients_per_round"))],
        "num_clients=2",
        "clients_per_round=2",
        "strategy.gradient_store=client",
        "deployment.liveness_timeout=30",
    )
    port = server_port(server)
    state = tmp_path / "client-1.state"
    first = [
        client(tmp_path, port, 0),
        client(tmp_path, port, 1, "--state", str(state), "--slow", "0.5"),
    ]
    ledger = tmp_path / "run" / "ledger.jsonl"
    wait_for(
        lambda: ledger.exists() and any(e["event"] == "model" for e in read_ledger(ledger)),
        120,
        "model version 1",
    )
    first[1].kill()
    first[1].communicate(timeout=30)
    assert state.exists(), "the anchor gradient was saved before its upload"
    restarted = client(tmp_path, port, 1, "--state", str(state))
    outputs = finish_federation(server, [first[0], restarted])
    entries = read_ledger(ledger)
    anchors = [e for e in entries if e["event"] == "accepted" and e["client"] == 1]
    assert anchors[0]["base_version"] == 0 and anchors[-1]["base_version"] == 2, outputs
    assert not [e for e in entries if e["event"] == "rejected"], outputs
